"""Episodes through their own jobs, over HTTP and over AMQP: opened, updated, closed,
cancelled, each checked as the original checks it, each processed job linking the episode."""

from __future__ import annotations

import copy
import uuid

import orjson

from service.domain.jobs import new_job_id
from tests.conftest import bearer
from tests.harness import EXAMPLES, poll

WRITE = bearer(scopes=("job:read", "episode:write", "episode:read"))
READ = bearer(scopes=("job:read",))


def episode_example(name: str, episode_id: str) -> dict:
    submission = orjson.loads((EXAMPLES / f"episode_{name}.json").read_bytes())
    submission = copy.deepcopy(submission)
    if name == "create":
        submission["data"]["id"] = episode_id
    else:
        submission["params"] = {"episode_id": episode_id}
    return submission


def route(submission: dict) -> tuple[str, str]:
    base = f"/api/patients/{submission['patient_id']}/episodes"
    action = submission["type"].split(".")[1]
    if action == "create":
        return "POST", base
    episode = f"{base}/{submission['params']['episode_id']}"
    return "PATCH", episode if action == "update" else f"{episode}/actions/{action}"


async def submitted(api, submission: dict) -> dict:
    method, path = route(submission)
    response = await api.request(method, path, json=submission["data"], headers=WRITE)
    body = await response.json()
    assert response.status == 202, body
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    return (await poll(api, job_id, READ))[1]["data"]


async def test_an_episode_is_opened_updated_and_closed_over_http(api, start_consumer) -> None:
    await start_consumer()
    episode_id = str(uuid.uuid4())
    created = await submitted(api, episode_example("create", episode_id))
    assert created["status"] == "processed", created
    href = created["links"][0]["href"]
    assert created["links"] == [{"entity": "episode", "href": href}]
    assert href.endswith(f"/episodes/{episode_id}")
    read = await (await api.get(href, headers=WRITE)).json()
    assert read["data"]["status"] == "active" and read["data"]["name"] == "Influenza, winter 2026"

    updated = await submitted(api, episode_example("update", episode_id))
    assert updated["status"] == "processed", updated
    read = await (await api.get(href, headers=WRITE)).json()
    assert read["data"]["name"] == "Influenza A, winter 2026"

    closed = await submitted(api, episode_example("close", episode_id))
    assert closed["status"] == "processed", closed
    read = await (await api.get(href, headers=WRITE)).json()
    assert read["data"]["status"] == "closed"
    assert read["data"]["period"] == {"start": "2026-12-01", "end": "2026-12-02"}
    assert read["data"]["closing_summary"] == "Recovered"

    again = await submitted(api, episode_example("close", episode_id))
    assert again["status_code"] == "409"
    assert again["error"]["message"] == "Episode in status closed can not be closed"


async def test_an_episode_is_checked_as_the_original_checks_it(api, start_consumer) -> None:
    await start_consumer()
    submission = episode_example("create", str(uuid.uuid4()))
    data = submission["data"]
    data["care_manager"]["identifier"]["value"] = str(uuid.uuid4())
    data["managing_organization"]["identifier"]["value"] = str(uuid.uuid4())
    failed = await submitted(api, submission)
    entries = {e["entry"]: e["rules"][0]["description"] for e in failed["error"]["invalid"]}
    assert entries == {
        "$.managing_organization.identifier.value": "LegalEntity with such ID is not found",
        "$.care_manager.identifier.value": "Employee with such ID is not found",
    }
    # An episode the patient does not have: 404 on the PATCH, as the original checks it there.
    method, path = route(episode_example("update", str(uuid.uuid4())))
    response = await api.request(method, path, json={"name": "x"}, headers=WRITE)
    assert response.status == 404
    assert (await response.json())["error"] == {"type": "not_found", "message": "Episode not found"}


async def test_an_episode_of_another_legal_entity_is_not_closed(api, publisher, start_consumer):
    await start_consumer()
    episode_id = str(uuid.uuid4())
    await submitted(api, episode_example("create", episode_id))
    other = episode_example("close", episode_id)
    other["requested_by"]["client_id"] = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    job_id = new_job_id()
    await publisher.publish(other, job_id, request_id=job_id)
    polled = (await poll(api, job_id, bearer(client_id=other["requested_by"]["client_id"])))[1]
    assert polled["data"]["error"] == {
        "type": "request_conflict",
        "message": "Managing_organization does not correspond to user's legal_entity",
    }
    unknown = episode_example("close", str(uuid.uuid4()))
    job_id = new_job_id()
    await publisher.publish(unknown, job_id, request_id=job_id)
    polled = (await poll(api, job_id, READ))[1]
    assert (polled["data"]["status_code"], polled["data"]["error"]) == (
        "404",
        "Failed to get episode",
    )


async def test_an_episode_with_an_encounter_is_not_cancelled(api, start_consumer) -> None:
    """The demo episode has the example package's encounter once it is processed."""
    from service.cli.demo import DEMO_EPISODE
    from tests.harness import example

    await start_consumer()
    package = example("encounter_package")
    response = await api.post(
        f"/api/patients/{package['patient_id']}/encounter_package",
        json=package["data"],
        headers=bearer(scopes=("job:read", "encounter:write")),
    )
    job_id = (await response.json())["data"]["links"][0]["href"].rsplit("/", 1)[1]
    assert (await poll(api, job_id, READ))[1]["data"]["status"] == "processed"
    refused = await submitted(api, episode_example("cancel", DEMO_EPISODE))
    assert refused["error"] == {
        "type": "request_conflict",
        "message": "Episode can not be canceled while it has not canceled encounters",
    }
    fresh = str(uuid.uuid4())
    await submitted(api, episode_example("create", fresh))
    cancelled = await submitted(api, episode_example("cancel", fresh))
    assert cancelled["status"] == "processed", cancelled


async def test_episode_jobs_over_amqp_carry_the_path_as_params(api, publisher, start_consumer):
    await start_consumer()
    episode_id = str(uuid.uuid4())
    for name in ("create", "update", "close"):
        job_id = new_job_id()
        await publisher.publish(episode_example(name, episode_id), job_id, request_id=job_id)
        _, polled = await poll(api, job_id, READ)
        assert polled["data"]["status"] == "processed", (name, polled)
    missing = episode_example("update", episode_id)
    del missing["params"]
    job_id = new_job_id()
    await publisher.publish(missing, job_id, request_id=job_id)
    _, polled = await poll(api, job_id, READ)
    assert polled["data"]["status_code"] == "422"
    assert polled["data"]["error"]["invalid"][0]["entry"] == "$.params.episode_id"


async def test_two_jobs_cannot_both_change_one_episode(db, patients) -> None:
    """The write is conditional on the status read: a close that lost the race to a cancel
    changes nothing (and answers 409), where a delivery again of the winner still applies."""
    from service.cli.demo import ACTIVE_PATIENT, DEMO_EPISODE
    from service.storage.entities import EntityStore

    entities = EntityStore(db)
    cancelled = {"status": "entered_in_error"}
    assert await entities.change_episode(
        ACTIVE_PATIENT, DEMO_EPISODE, "cancel-job", cancelled, from_statuses=("active", "closed")
    )
    closed = {"status": "closed"}
    assert not await entities.change_episode(
        ACTIVE_PATIENT, DEMO_EPISODE, "close-job", closed, from_statuses=("active",)
    )
    assert (await db["episodes"].find_one({"_id": DEMO_EPISODE}))["status"] == "entered_in_error"
    assert await entities.change_episode(
        ACTIVE_PATIENT, DEMO_EPISODE, "cancel-job", cancelled, from_statuses=("active", "closed")
    )

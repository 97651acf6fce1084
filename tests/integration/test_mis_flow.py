"""The whole flow of an MIS, as it would run against eHealth's service: open an episode, poll
it to processed, submit an encounter package in that episode, poll, follow every link, list
the patient's conditions and the episode's encounters, update then close the episode, cancel
the package. Over HTTP, and the same through AMQP producers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import orjson

from service.domain.jobs import new_job_id
from service.signatures import encode_unsigned
from tests.conftest import bearer
from tests.harness import EXAMPLES, examples, package_content, poll

SCOPES = (
    "job:read",
    "episode:write",
    "encounter:write",
    "episode:read",
    "encounter:read",
    "condition:read",
    "observation:read",
    "allergy_intolerance:read",
    "immunization:read",
    "risk_assessment:read",
    "device:read",
    "medication_statement:read",
    "medication_administration:read",
    "diagnostic_report:read",
    "procedure:read",
)
MIS = bearer(scopes=SCOPES, user_id="demo-doctor")


def _example(name: str) -> dict:
    return orjson.loads((EXAMPLES / f"{name}.json").read_bytes())


def episode_request(name: str, episode_id: str) -> dict:
    submission = _example(f"episode_{name}")
    if name == "create":
        submission["data"]["id"] = episode_id
    else:
        submission["params"] = {"episode_id": episode_id}
    return submission


def in_episode(submission: dict, episode_id: str) -> dict:
    content = package_content(submission)
    content["encounter"]["episode"]["identifier"]["value"] = episode_id
    return {**submission, "data": {**submission["data"], "signed_data": encode_unsigned(content)}}


def over_http(api) -> Callable[[dict], Awaitable[dict]]:
    async def submit(submission: dict) -> dict:
        patient = f"/api/patients/{submission['patient_id']}"
        kind, action = submission["type"].split(".")
        if kind == "encounter_package":
            method, path = (
                ("POST" if action == "create" else "PATCH"),
                f"{patient}/encounter_package",
            )
        elif action == "create":
            method, path = "POST", f"{patient}/episodes"
        else:
            episode = f"{patient}/episodes/{submission['params']['episode_id']}"
            method, path = "PATCH", episode if action == "update" else f"{episode}/actions/{action}"
        response = await api.request(method, path, json=submission["data"], headers=MIS)
        body = await response.json()
        assert response.status == 202, body
        job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
        return (await poll(api, job_id, MIS))[1]["data"]

    return submit


def over_amqp(api, publisher) -> Callable[[dict], Awaitable[dict]]:
    async def submit(submission: dict) -> dict:
        job_id = new_job_id()
        await publisher.publish(submission, job_id, request_id=f"mis-{job_id}")
        return (await poll(api, job_id, MIS))[1]["data"]

    return submit


async def walk(api, submit: Callable[[dict], Awaitable[dict]]) -> None:
    episode_id = str(uuid.uuid4())
    opened = await submit(episode_request("create", episode_id))
    assert opened["status"] == "processed", opened
    [episode_link] = opened["links"]

    package, cancel = examples("encounter_package", "cancel_encounter_package")
    package, cancel = in_episode(package, episode_id), in_episode(cancel, episode_id)
    created = await submit(package)
    assert created["status"] == "processed", created
    assert len(created["links"]) == 11
    for link in [episode_link, *created["links"]]:
        response = await api.get(link["href"], headers=MIS)
        assert response.status == 200, (link, await response.text())

    patient = f"/api/patients/{package['patient_id']}"
    content = package_content(package)
    conditions = await (
        await api.get(f"{patient}/conditions?episode_id={episode_id}", headers=MIS)
    ).json()
    assert [c["id"] for c in conditions["data"]] == [content["conditions"][0]["id"]]
    assert conditions["paging"]["total_entries"] == 1
    encounters = await (
        await api.get(f"{patient}/episodes/{episode_id}/encounters", headers=MIS)
    ).json()
    assert [e["id"] for e in encounters["data"]] == [content["encounter"]["id"]]

    updated = await submit(episode_request("update", episode_id))
    assert updated["status"] == "processed", updated
    closed = await submit(episode_request("close", episode_id))
    assert closed["status"] == "processed", closed
    episode = await (await api.get(episode_link["href"], headers=MIS)).json()
    assert episode["data"]["status"] == "closed"

    cancelled = await submit(cancel)
    assert cancelled["status"] == "processed", cancelled
    encounter = await (await api.get(created["links"][0]["href"], headers=MIS)).json()
    assert encounter["data"]["status"] == "entered_in_error"


async def test_the_whole_flow_of_an_mis_over_http(api, start_consumer) -> None:
    await start_consumer()
    await walk(api, over_http(api))


async def test_the_whole_flow_of_an_mis_through_amqp_producers(api, publisher, start_consumer):
    await start_consumer()
    await walk(api, over_amqp(api, publisher))

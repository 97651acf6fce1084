"""Every link of a processed job resolves to its entity; job and entity responses carry an
ETag and answer `If-None-Match` with 304."""

from __future__ import annotations

import pytest

from service.api.keys import JOB_SERVICE
from service.domain.entities import ALL_ENTITY_KINDS, READABLE_KINDS
from service.domain.jobs import JobOutcome, new_job_id
from tests.conftest import bearer, new_job
from tests.harness import (
    ACTIVE_PATIENT,
    DEMO_CLIENT,
    INACTIVE_PATIENT,
    example,
    package_content,
    poll,
)

READ_ALL = bearer(
    client_id=DEMO_CLIENT,
    scopes=("job:read", *(f"{kind.entity}:read" for kind in READABLE_KINDS)),
)


@pytest.fixture
async def processed(api, publisher, start_consumer):
    """A processed example package: (submission, links)."""
    await start_consumer()
    submission = example("encounter_package")
    job_id = new_job_id()
    await publisher.publish(submission, job_id, request_id=job_id)
    _, body = await poll(api, job_id, READ_ALL)
    assert body["data"]["status"] == "processed"
    return submission, body["data"]["links"]


async def test_every_link_of_a_processed_job_resolves(api, processed) -> None:
    submission, links = processed
    content = package_content(submission)
    sent = {content["encounter"]["id"]: content["encounter"]}
    for kind in ALL_ENTITY_KINDS[1:]:
        sent.update({entity["id"]: entity for entity in content[kind.package_key]})

    for link in links:
        response = await api.get(link["href"], headers=READ_ALL)
        body = await response.json()
        assert response.status == 200 and body["meta"]["code"] == 200, link
        assert body["meta"]["url"].endswith(link["href"])
        entity = body["data"]
        entity_id = link["href"].rsplit("/", 1)[-1]
        assert entity["id"] == entity_id and entity["patient_id"] == ACTIVE_PATIENT
        assert entity["inserted_at"].endswith("Z")
        # What the client sent comes back as it sent it (dates in the server's ISO form).
        for key, value in sent[entity_id].items():
            if key in {"date", "onset_date", "issued", "effective_date_time", "asserted_date"}:
                assert entity[key].startswith(value.removesuffix("Z")), (link, key)
            elif key not in {"period", "usage_period", "onset_date_time", "performed_date_time"}:
                assert entity[key] == value, (link, key)


async def test_entity_reads_need_the_scope_of_their_kind(api, processed) -> None:
    _, links = processed
    condition = next(link["href"] for link in links if link["entity"] == "condition")
    only_encounters = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:read"))
    response = await api.get(condition, headers=only_encounters)
    assert response.status == 403
    assert (await response.json())["error"]["message"].endswith(
        "Missing allowances: condition:read"
    )


async def test_unknown_and_foreign_entities_are_not_found(api, processed) -> None:
    _, links = processed
    encounter = links[0]["href"]
    entity_id = encounter.rsplit("/", 1)[-1]
    for path in (
        f"/api/patients/{ACTIVE_PATIENT}/encounters/00000000-0000-4000-8000-000000000000",
        f"/api/patients/{INACTIVE_PATIENT}/encounters/{entity_id}",  # another patient's
        f"/api/patients/{ACTIVE_PATIENT}/encounters/not-a-uuid",
        f"/api/patients/{ACTIVE_PATIENT}/visits/{entity_id}",  # not a collection read
        f"/api/patients/{ACTIVE_PATIENT}/episodes/{entity_id}",  # an episode of that id: none
        f"/api/patients/not-a-uuid/encounters/{entity_id}",
    ):
        response = await api.get(path, headers=READ_ALL)
        body = await response.json()
        assert response.status == 404, path
        assert body["error"]["type"] == "not_found"


async def test_job_responses_carry_an_etag_and_answer_304(api, store) -> None:
    job, _ = await store.create_pending(new_job(client_id=DEMO_CLIENT))
    url = f"/api/jobs/{job['_id']}"
    first = await api.get(url, headers=READ_ALL)
    tag = first.headers["ETag"]
    # Weak: the same state, though `meta.request_id` makes the bytes differ.
    assert tag.startswith('W/"') and tag.endswith('"')

    again = await api.get(url, headers={**READ_ALL, "If-None-Match": tag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == tag
    strong_form = tag.removeprefix("W/")
    assert (await api.get(url, headers={**READ_ALL, "If-None-Match": strong_form})).status == 304
    assert (await api.get(url, headers={**READ_ALL, "If-None-Match": '"other", *'})).status == 304

    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    # The finish is announced, as the consumer does: a pending job's answer is kept in memory
    # until its finish event (test_poll_from_memory.py has the lost-event bound).
    await api.app[JOB_SERVICE].events.announce(job["_id"])
    changed = await api.get(url, headers={**READ_ALL, "If-None-Match": tag})
    assert changed.status == 200 and changed.headers["ETag"] != tag


async def test_a_processed_job_stays_303_whatever_its_etag(api, processed, db) -> None:
    job = await db["jobs"].find_one({"status": 1})
    url = f"/api/jobs/{job['_id']}"
    first = await api.get(url, headers=READ_ALL, allow_redirects=False)
    again = await api.get(
        url, headers={**READ_ALL, "If-None-Match": first.headers["ETag"]}, allow_redirects=False
    )
    assert first.status == again.status == 303  # RFC 9110: only a 2xx becomes 304


async def test_entity_responses_carry_an_etag_too(api, processed) -> None:
    _, links = processed
    first = await api.get(links[0]["href"], headers=READ_ALL)
    again = await api.get(
        links[0]["href"], headers={**READ_ALL, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304

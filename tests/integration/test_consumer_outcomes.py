"""Each outcome end to end: a submission published to a real RabbitMQ (or submitted over
HTTP), processed by the consumer into MongoDB, polled through `GET /api/jobs/{id}`."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from consumers.processors import builtin_registry
from schemas.rules import StrictSchema
from service.api.keys import JOB_SERVICE
from service.domain.entities import ALL_ENTITY_KINDS
from service.domain.jobs import new_job_id
from service.usecases.job_types import JobType
from tests.conftest import bearer
from tests.harness import (
    ACTIVE_PATIENT,
    DEMO_CLIENT,
    entity_counts,
    example,
    package_entity_count,
    poll,
    submission_with,
    wait_for_jobs,
)

READ = bearer(client_id=DEMO_CLIENT)
WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


async def published(publisher, submission: dict) -> str:
    job_id = new_job_id()
    await publisher.publish(submission, job_id, request_id=f"req-{job_id}")
    return job_id


async def test_processed_package_links_every_entity(api, db, publisher, start_consumer):
    await start_consumer()
    submission = example("encounter_package")
    job_id = await published(publisher, submission)

    response, body = await poll(api, job_id, READ)

    assert response.status == 303 and body["meta"]["code"] == 303
    assert "Location" not in response.headers
    assert body["data"]["status"] == "processed" and body["data"]["status_code"] == "200"
    links = body["data"]["links"]
    assert {link["entity"] for link in links} == {kind.entity for kind in ALL_ENTITY_KINDS}
    encounter_id = submission["data"]["encounter"]["id"]
    assert links[0] == {
        "entity": "encounter",
        "href": f"/api/patients/{ACTIVE_PATIENT}/encounters/{encounter_id}",
    }
    assert await entity_counts(db) == package_entity_count(submission)
    for link in links:  # each link names a stored entity of that patient
        _, _, patient_id, collection, entity_id = link["href"].strip("/").split("/")
        stored = await db[collection].find_one({"_id": entity_id})
        assert stored["patient_id"] == patient_id == ACTIVE_PATIENT
        assert stored["job_id"] == job_id
    job = await db["jobs"].find_one({"_id": job_id})
    assert job["request_id"] == f"req-{job_id}"
    assert job["client_id"] == DEMO_CLIENT and job["attempts"] == 1


@pytest.mark.parametrize(
    ("name", "status_code", "error"),
    [
        (
            "failed_403_missing_scope",
            "403",
            "Your scope does not allow to access this resource. "
            "Missing allowances: encounter:write",
        ),
        ("failed_404_unknown_patient", "404", "Patient not found"),
        (
            "failed_409_inactive_patient",
            "409",
            {"message": "Patient is not active", "type": "request_conflict"},
        ),
    ],
)
async def test_business_rule_failures(api, db, publisher, start_consumer, name, status_code, error):
    await start_consumer()
    job_id = await published(publisher, example(name))
    response, body = await poll(api, job_id, READ)
    assert response.status == 200
    assert body["data"]["status"] == "failed"
    assert body["data"]["status_code"] == status_code
    assert body["data"]["error"] == error
    assert sum((await entity_counts(db)).values()) == 0


async def test_invalid_package_reports_every_error_at_once(api, db, publisher, start_consumer):
    await start_consumer()
    job_id = await published(publisher, example("failed_422_invalid_package", new_ids=False))
    _, body = await poll(api, job_id, READ)
    error = body["data"]["error"]
    assert body["data"]["status_code"] == "422"
    assert error["type"] == "validation_failed"
    rules = {
        entry["entry"]: [rule["rule"] for rule in entry["rules"]] for entry in error["invalid"]
    }
    assert rules == {
        "$.data.encounter.period.start": ["format"],
        "$.data.conditions[0].code.coding[0].code": ["required"],
        "$.data.observations[0].value_quantity.value": ["type"],
        "$.data.immunizations[0].status": ["inclusion"],
        "$.data.procedures[0].color": ["unknown"],
        "$.data.devices[0].encounter_id": ["reference"],
    }
    inclusion = next(e for e in error["invalid"] if e["entry"].endswith("immunizations[0].status"))
    assert inclusion["rules"][0]["params"] == ["completed", "entered_in_error"]
    assert all(entry["entry_type"] == "json_data_property" for entry in error["invalid"])
    assert sum((await entity_counts(db)).values()) == 0


async def test_an_entity_id_that_exists_is_a_conflict_and_nothing_is_left(
    api, db, publisher, start_consumer
):
    await start_consumer()
    first = example("encounter_package")
    await wait_for_jobs(db, [await published(publisher, first)])
    # A new encounter whose observation reuses the first package's observation id.
    second = example("encounter_package")
    second["data"]["observations"][0]["id"] = first["data"]["observations"][0]["id"]
    job_id = await published(publisher, second)

    _, body = await poll(api, job_id, READ)

    assert body["data"]["status_code"] == "409"
    observation_id = first["data"]["observations"][0]["id"]
    assert body["data"]["error"] == {
        "message": f"Observation with id '{observation_id}' already exists",
        "type": "request_conflict",
    }
    assert await entity_counts(db) == package_entity_count(first)
    assert await db["encounters"].find_one({"_id": second["data"]["encounter"]["id"]}) is None


async def test_an_unexpected_exception_fails_with_500_after_bounded_retries(
    api, db, publisher, start_consumer
):
    calls = []

    async def explode(context):
        calls.append(context.job_id)
        raise RuntimeError("a bug in a handler")

    class AnyData(StrictSchema):
        pass

    exploding = JobType("test.explode", AnyData(), explode, required_scope="encounter:write")
    await start_consumer(builtin_registry().with_types(exploding), max_attempts=3, retry_delay=0)
    submission = submission_with(example("encounter_package"), type="test.explode", data={})
    job_id = await published(publisher, submission)

    _, body = await poll(api, job_id, READ)

    assert body["data"]["status"] == "failed_with_error"
    assert body["data"]["status_code"] == "500"
    assert body["data"]["error"]["type"] == "internal_error"
    assert "a bug" not in body["data"]["error"]["message"]
    assert len(calls) == 3
    assert (await db["jobs"].find_one({"_id": job_id}))["attempts"] == 3


async def test_http_submission_end_to_end(api, db, start_consumer, captured_logs):
    await start_consumer()
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"

    response = await api.post(url, json=data, headers={**WRITE, "x-request-id": "req-http-1"})
    body = await response.json()

    assert response.status == 202 and body["meta"]["code"] == 202
    assert body["data"]["status"] == "pending"
    job_href = body["data"]["links"][0]["href"]
    assert response.headers["Location"] == job_href
    job_id = job_href.rsplit("/", 1)[-1]
    response, body = await poll(api, job_id, READ)
    assert response.status == 303 and body["data"]["status"] == "processed"
    job = await db["jobs"].find_one({"_id": job_id})
    assert job["request_id"] == "req-http-1"
    # One id finds everything: the HTTP request's lines, the consumer's, the job document.
    finished = [e for e in captured_logs.events("job_finished") if e.get("job_id") == job_id]
    assert [event["request_id"] for event in finished] == ["req-http-1"]
    submitted = captured_logs.events("job_submitted")
    assert [event["request_id"] for event in submitted] == ["req-http-1"]


async def test_http_cancel_end_to_end(api, db, start_consumer):
    await start_consumer()
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    created = await (await api.post(url, json=data, headers=WRITE)).json()
    await poll(api, created["data"]["links"][0]["href"].rsplit("/", 1)[-1], READ)
    cancel = {"encounter_id": data["encounter"]["id"], "explanatory_letter": "wrong patient"}

    async def cancelled(headers) -> dict:
        accepted = await (await api.patch(url, json=cancel, headers=headers)).json()
        _, body = await poll(
            api,
            accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1],
            READ if headers is WRITE else bearer(client_id="other-mis"),
        )
        return body["data"]

    other = bearer(client_id="other-mis", scopes=("job:read", "encounter:write"))
    refused = await cancelled(other)
    assert refused["status_code"] == "403"

    done = await cancelled(WRITE)
    assert done["status"] == "processed"
    assert len(done["links"]) == sum(package_entity_count({"data": data}).values())
    encounter = await db["encounters"].find_one({"_id": data["encounter"]["id"]})
    assert encounter["status"] == "entered_in_error"
    condition = await db["conditions"].find_one({"_id": data["conditions"][0]["id"]})
    assert condition["verification_status"] == "entered_in_error"

    again = await cancelled(WRITE)
    assert again["status_code"] == "409"
    assert again["error"] == {
        "message": "Encounter is already cancelled",
        "type": "request_conflict",
    }

    missing = {"encounter_id": "00000000-0000-4000-8000-000000000001"}
    accepted = await (await api.patch(url, json=missing, headers=WRITE)).json()
    _, body = await poll(api, accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1], READ)
    assert body["data"]["status_code"] == "404"


async def test_identical_pending_http_submission_returns_the_same_job(api, db):
    # No consumer runs: the first job stays pending.
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    first = await (await api.post(url, json=data, headers=WRITE)).json()
    second = await (await api.post(url, json=data, headers=WRITE)).json()
    assert first["data"]["links"] == second["data"]["links"]
    assert await db["jobs"].count_documents({}) == 1


@pytest.mark.parametrize(
    ("body", "rule"),
    [(b"{not json", "json"), (b"[1, 2]", "type"), (b'"text"', "type")],
)
async def test_http_submission_that_is_no_json_object_is_422_at_once(api, db, body, rule):
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, data=body, headers=WRITE)
    payload = await response.json()
    assert response.status == 422 and payload["meta"]["code"] == 422
    assert payload["error"]["type"] == "validation_failed"
    assert payload["error"]["invalid"][0]["entry"] == "$"
    assert payload["error"]["invalid"][0]["rules"][0]["rule"] == rule
    assert await db["jobs"].count_documents({}) == 0


async def test_http_submission_needs_the_write_scope_and_a_patient_uuid(api):
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, json={}, headers=READ)
    assert response.status == 403
    response = await api.post("/api/patients/not-a-uuid/encounter_package", json={}, headers=WRITE)
    assert response.status == 404


async def test_http_submission_while_the_broker_is_down_is_503_and_no_job_is_left(
    aiohttp_client, settings, db
):
    from service.storage.embedded import free_port
    from tests.integration.conftest import app_for

    down = settings.with_changes(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    api = await aiohttp_client(app_for(down))
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
    body = await response.json()
    assert response.status == 503 and body["error"]["type"] == "service_unavailable"
    assert response.headers["Retry-After"].isdigit()
    # The message goes first: with no message sent, no job exists to wait for it.
    assert await db["jobs"].count_documents({}) == 0


async def test_http_422_paths_are_relative_to_the_posted_body(api, db, start_consumer):
    await start_consumer()
    data = example("failed_422_invalid_package", new_ids=False)["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    accepted = await (await api.post(url, json=data, headers=WRITE)).json()
    _, body = await poll(api, accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1], READ)
    entries = [entry["entry"] for entry in body["data"]["error"]["invalid"]]
    assert "$.encounter.period.start" in entries
    assert "$.conditions[0].code.coding[0].code" in entries
    assert not any(entry.startswith("$.data") for entry in entries)


async def test_an_http_body_just_under_the_limit_is_processed(api, db, settings, start_consumer):
    await start_consumer()
    data = example("encounter_package")["data"]
    observation = data["observations"][0]
    observation.pop("diagnostic_report_id")
    size = len(orjson.dumps(data))
    while size < settings.max_request_bytes - 2500:
        data["observations"].append({**observation, "id": str(uuid.uuid4()), "comment": "x" * 1900})
        size = len(orjson.dumps(data))
    assert settings.max_request_bytes - 2500 <= size <= settings.max_request_bytes
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, data=orjson.dumps(data), headers=WRITE)
    assert response.status == 202
    job_id = (await response.json())["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    response, body = await poll(api, job_id, READ)
    assert body["data"]["status"] == "processed", body

    too_big = {**data, "encounter": {**data["encounter"], "pad": "x" * settings.max_request_bytes}}
    response = await api.post(url, data=orjson.dumps(too_big), headers=WRITE)
    assert response.status == 413


async def test_an_http_body_with_a_key_given_twice_is_422_at_once(api, db):
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    body = b'{"encounter": {"status": "finished", "status": "x"}}'
    response = await api.post(url, data=body, headers=WRITE)
    payload = await response.json()
    assert response.status == 422
    assert payload["error"]["invalid"][0]["entry"] == "$.encounter.status"
    assert payload["error"]["invalid"][0]["rules"][0]["rule"] == "unique"
    assert await db["jobs"].count_documents({}) == 0


async def test_identical_submissions_arriving_together_make_one_job(api, db):
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    responses = await asyncio.gather(*(api.post(url, json=data, headers=WRITE) for _ in range(5)))
    bodies = [await response.json() for response in responses]
    assert {response.status for response in responses} == {202}
    assert len({body["data"]["links"][0]["href"] for body in bodies}) == 1
    assert await db["jobs"].count_documents({}) == 1
    assert api.app[JOB_SERVICE]._submitting == {}  # nothing kept once they are through

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
from service.domain.jobs import VALIDATION_FAILED_MESSAGE, JobStatus, new_job_id
from service.signatures import encode_unsigned
from service.usecases.job_types import JobType
from tests.conftest import bearer
from tests.harness import (
    ACTIVE_PATIENT,
    DEMO_CLIENT,
    entity_counts,
    example,
    examples,
    package_content,
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
    encounter_id = package_content(submission)["encounter"]["id"]
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
        if collection != "encounters":
            assert stored["encounter_id"] == encounter_id
    visit = await db["visits"].find_one({"_id": submission["data"]["visit"]["id"]})
    assert visit["patient_id"] == ACTIVE_PATIENT and visit["job_id"] == job_id
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
            {"message": "Person is not active", "type": "request_conflict"},
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
    assert error["message"] == VALIDATION_FAILED_MESSAGE
    rules = {
        entry["entry"]: [rule["rule"] for rule in entry["rules"]] for entry in error["invalid"]
    }
    # The content's errors (signed_data decoded) are from the content's root, over AMQP too.
    assert rules == {
        "$.encounter.class.code": ["cast"],
        "$.encounter.performer": ["required"],
        "$.encounter.priority": ["schema"],
        "$.conditions.[0].onset_date": ["datetime"],
        "$.observations.[0].status": ["cast"],
        "$.immunizations.[0].id": ["format"],
    }
    by_entry = {entry["entry"]: entry["rules"][0] for entry in error["invalid"]}
    assert by_entry["$.encounter.class.code"]["params"] == ["string"]
    assert by_entry["$.encounter.performer"]["description"] == (
        "required property performer was not present"
    )
    assert by_entry["$.encounter.priority"]["params"] == {"priority": "urgent"}
    assert all(entry["entry_type"] == "json_data_property" for entry in error["invalid"])
    assert sum((await entity_counts(db)).values()) == 0


async def test_an_entity_id_that_exists_is_a_422_and_nothing_is_left(
    api, db, publisher, start_consumer
):
    await start_consumer()
    first = example("encounter_package")
    await wait_for_jobs(db, [await published(publisher, first)])
    # A new encounter whose observation reuses the first package's observation id (and the
    # package's references to its observation with it).
    second = example("encounter_package")
    observation_id = package_content(first)["observations"][0]["id"]
    own_id = package_content(second)["observations"][0]["id"]
    content = orjson.loads(
        orjson.dumps(package_content(second)).replace(own_id.encode(), observation_id.encode())
    )
    assert content["observations"][0]["id"] == observation_id
    second["data"]["signed_data"] = encode_unsigned(content)
    job_id = await published(publisher, second)

    _, body = await poll(api, job_id, READ)

    assert body["data"]["status_code"] == "422"
    assert body["data"]["error"] == {
        "type": "validation_failed",
        "message": VALIDATION_FAILED_MESSAGE,
        "invalid": [
            {
                "entry_type": "json_data_property",
                "entry": "$.observations[0].id",
                "rules": [
                    {
                        "rule": "invalid",
                        "params": [],
                        "description": f"Observation with id '{observation_id}' already exists",
                    }
                ],
            }
        ],
    }
    assert await entity_counts(db) == package_entity_count(first)
    assert await db["encounters"].find_one({"_id": content["encounter"]["id"]}) is None
    assert await db["visits"].find_one({"_id": second["data"]["visit"]["id"]}) is None


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
    package, cancel = examples("encounter_package", "cancel_encounter_package")
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    created = await (await api.post(url, json=package["data"], headers=WRITE)).json()
    await poll(api, created["data"]["links"][0]["href"].rsplit("/", 1)[-1], READ)
    content = package_content(package)
    marked = package_content(cancel)
    assert marked["encounter"]["id"] == content["encounter"]["id"]

    async def cancelled(data, headers) -> tuple[str, dict]:
        response = await api.patch(url, json=data, headers=headers)
        accepted = await response.json()
        assert response.status == 202, accepted
        job_id = accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1]
        reader = READ if headers is WRITE else bearer(client_id="other-mis")
        _, body = await poll(api, job_id, reader)
        return job_id, body["data"]

    other = bearer(client_id="other-mis", scopes=("job:read", "encounter:write"))
    _, refused = await cancelled(cancel["data"], other)
    # Another MIS: the episode's managing organization is not its legal entity (eHealth's 422).
    assert refused["status_code"] == "422"
    assert refused["error"]["invalid"] == [
        {
            "entry_type": "json_data_property",
            "entry": "$.managing_organization.identifier.value",
            "rules": [
                {
                    "rule": "invalid",
                    "params": [],
                    "description": (
                        "Managing_organization does not correspond to user's legal_entity"
                    ),
                }
            ],
        }
    ]
    untouched = await db["encounters"].find_one({"_id": content["encounter"]["id"]})
    assert untouched["status"] == "finished" and "cancelled_by_job" not in untouched

    cancel_job, done = await cancelled(cancel["data"], WRITE)
    assert done["status"] == "processed"
    # The cancel marks every entity of the package: each is a link.
    assert len(done["links"]) == sum(package_entity_count(package).values())
    encounter = await db["encounters"].find_one({"_id": content["encounter"]["id"]})
    assert encounter["status"] == "entered_in_error"
    assert encounter["explanatory_letter"] == marked["encounter"]["explanatory_letter"]
    condition = await db["conditions"].find_one({"_id": content["conditions"][0]["id"]})
    assert condition["verification_status"] == "entered_in_error"
    assert encounter["cancelled_by_job"] == condition["cancelled_by_job"] == cancel_job

    _, again = await cancelled(cancel["data"], WRITE)
    assert again["status_code"] == "409"
    assert again["error"] == {
        "message": "Invalid transition for encounter - already entered_in_error",
        "type": "request_conflict",
    }

    unknown = {**marked, "encounter": {**marked["encounter"], "id": str(uuid.uuid4())}}
    _, missing = await cancelled({"signed_data": encode_unsigned(unknown)}, WRITE)
    assert missing["status_code"] == "404"
    assert missing["error"] == "Encounter not found"


async def test_identical_pending_http_submission_returns_the_same_job(api, db, patients):
    # No consumer runs: the first job stays pending.
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    first = await (await api.post(url, json=data, headers=WRITE)).json()
    second = await (await api.post(url, json=data, headers=WRITE)).json()
    assert first["data"]["links"] == second["data"]["links"]
    assert await db["jobs"].count_documents({}) == 1


@pytest.mark.parametrize(
    ("body", "rule"),
    [(b"{not json", "json"), (b"[1, 2]", "cast"), (b'"text"', "cast")],
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


async def test_http_submission_while_the_broker_is_down_is_503_and_no_job_is_left_pending(
    aiohttp_client, settings, db, patients
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
    # The job is recorded first (its key makes identical submissions one job), then ended at
    # once when the broker refuses its message: none waits for a message that was never sent.
    jobs = [job async for job in db["jobs"].find({})]
    assert [(job["status"], job["status_code"]) for job in jobs] == [
        (JobStatus.FAILED_WITH_ERROR, 500)
    ]
    assert "could not be queued" in jobs[0]["error"]["message"]
    assert "pending_key" not in jobs[0]


async def test_http_422_paths_are_relative_to_the_posted_body(api, db, start_consumer):
    await start_consumer()
    data = example("failed_422_invalid_package", new_ids=False)["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    # The envelope is the posted body: its errors are answered at once, from its root.
    broken = {**data, "visit": {**data["visit"], "period": {"start": "yesterday"}}}
    response = await api.post(url, json=broken, headers=WRITE)
    refused = await response.json()
    assert response.status == 422
    assert refused["error"]["message"] == VALIDATION_FAILED_MESSAGE
    entries = [entry["entry"] for entry in refused["error"]["invalid"]]
    assert entries == ["$.visit.period.start", "$.visit.period.end"]
    assert await db["jobs"].count_documents({}) == 0
    # The content's errors are from the content's root (what signed_data carries).
    accepted = await (await api.post(url, json=data, headers=WRITE)).json()
    _, body = await poll(api, accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1], READ)
    entries = [entry["entry"] for entry in body["data"]["error"]["invalid"]]
    assert "$.encounter.class.code" in entries
    assert "$.conditions.[0].onset_date" in entries
    assert not any(entry.startswith("$.data") for entry in entries)


async def test_an_http_body_just_under_the_limit_is_processed(api, db, settings, start_consumer):
    await start_consumer()
    data = example("encounter_package")["data"]
    content = package_content({"data": data})
    observation = content["observations"][0]
    observation.pop("diagnostic_report")
    size = len(orjson.dumps(data))
    while size < settings.max_request_bytes - 2500:
        content["observations"].append(
            {**observation, "id": str(uuid.uuid4()), "comment": "x" * 1000}
        )
        data["signed_data"] = encode_unsigned(content)
        size = len(orjson.dumps(data))
    assert settings.max_request_bytes - 2500 <= size <= settings.max_request_bytes
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, data=orjson.dumps(data), headers=WRITE)
    assert response.status == 202
    job_id = (await response.json())["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    response, body = await poll(api, job_id, READ)
    assert body["data"]["status"] == "processed", body

    padded = {**content, "encounter": {**content["encounter"], "pad": "x" * 2000}}
    too_big = {**data, "signed_data": encode_unsigned(padded)}
    assert len(orjson.dumps(too_big)) > settings.max_request_bytes
    response = await api.post(url, data=orjson.dumps(too_big), headers=WRITE)
    assert response.status == 413


async def test_an_http_body_with_a_key_given_twice_is_422_at_once(api, db):
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    body = b'{"visit": {"id": "a", "id": "b"}, "signed_data": "e30="}'
    response = await api.post(url, data=body, headers=WRITE)
    payload = await response.json()
    assert response.status == 422
    assert payload["error"]["invalid"][0]["entry"] == "$.visit.id"
    assert payload["error"]["invalid"][0]["rules"][0]["rule"] == "unique"
    assert await db["jobs"].count_documents({}) == 0


async def test_identical_submissions_arriving_together_make_one_job(api, db, patients):
    data = example("encounter_package")["data"]
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    responses = await asyncio.gather(*(api.post(url, json=data, headers=WRITE) for _ in range(5)))
    bodies = [await response.json() for response in responses]
    assert {response.status for response in responses} == {202}
    assert len({body["data"]["links"][0]["href"] for body in bodies}) == 1
    assert await db["jobs"].count_documents({}) == 1
    assert api.app[JOB_SERVICE]._submitting == {}  # nothing kept once they are through

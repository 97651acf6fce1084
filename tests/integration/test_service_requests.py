"""eHealth's service requests, end to end over a real broker and MongoDB: created over HTTP and
through AMQP, linked and read back; the business rules as the original words them; the same
content sent twice."""

from __future__ import annotations

import uuid

from service.cli.demo import DEMO_EPISODE
from service.domain.jobs import new_job_id
from service.signatures import encode_unsigned
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, example, package_content, poll

WRITE = bearer(scopes=("job:read", "service_request:write"))
READ = bearer(scopes=("job:read", "service_request:read"))
PATH = f"/api/patients/{ACTIVE_PATIENT}/service_requests"


async def an_encounter(db) -> str:
    """An encounter of the active patient, in the demo episode: a service request's context."""
    encounter_id = str(uuid.uuid4())
    await db["encounters"].insert_one(
        {"_id": encounter_id, "patient_id": ACTIVE_PATIENT, "episode_id": DEMO_EPISODE}
    )
    return encounter_id


def submission_for(encounter_id: str, **changes) -> dict:
    submission = example("service_request")
    content = package_content(submission)
    content["context"]["identifier"]["value"] = encounter_id
    content.update(changes)
    return {**submission, "data": {"signed_data": encode_unsigned(content)}}


async def submitted(api, submission: dict) -> dict:
    response = await api.post(PATH, json=submission["data"], headers=WRITE)
    body = await response.json()
    assert response.status == 202, body
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    _, polled = await poll(api, job_id, READ)
    return polled["data"]


async def read_link(api, job: dict) -> dict:
    assert (job["status"], job["status_code"]) == ("processed", "200"), job
    [link] = job["links"]
    assert link["entity"] == "service_request"
    assert link["href"].startswith(f"{PATH}/")
    response = await api.get(link["href"], headers=READ)
    body = await response.json()
    assert response.status == 200, body
    return body["data"]


async def test_a_service_request_posted_over_http_is_stored_active(
    api, db, patients, start_consumer
) -> None:
    await start_consumer()
    encounter_id = await an_encounter(db)
    job = await submitted(api, submission_for(encounter_id))
    stored = await read_link(api, job)
    assert stored["status"] == "active"
    assert stored["context"]["identifier"]["value"] == encounter_id
    assert stored["episode_id"] == DEMO_EPISODE
    listed = await api.get(f"{PATH}?episode_id={DEMO_EPISODE}&status=active", headers=READ)
    assert [item["id"] for item in (await listed.json())["data"]] == [stored["id"]]


async def test_a_service_request_published_over_amqp_is_processed(
    api, db, patients, publisher, start_consumer
) -> None:
    await start_consumer()
    encounter_id = await an_encounter(db)
    job_id = new_job_id()
    await publisher.publish(submission_for(encounter_id), job_id, request_id=job_id)
    _, polled = await poll(api, job_id, READ)
    stored = await read_link(api, polled["data"])
    assert stored["requester_employee"]["identifier"]["value"]


async def test_broken_rules_are_422s_all_at_once(api, db, patients, start_consumer) -> None:
    await start_consumer()
    unknown = str(uuid.uuid4())
    submission = submission_for(
        unknown,
        authored_on="2999-01-01T00:00:00Z",
        requester_legal_entity={"identifier": {"value": str(uuid.uuid4())}},
        supporting_info=[
            {
                "identifier": {
                    "type": {
                        "coding": [{"system": "eHealth/resources", "code": "episode_of_care"}]
                    },
                    "value": unknown,
                }
            }
        ],
    )
    job = await submitted(api, submission)
    assert job["status_code"] == "422", job
    found = {e["entry"]: e["rules"][0]["description"] for e in job["error"]["invalid"]}
    assert found == {
        "$.requester_legal_entity.identifier.value": "Must be current legal enity",
        "$.context.identifier.value": "Encounter with such ID is not found",
        "$.supporting_info[0].identifier.value": "Episode with such ID is not found",
        "$.authored_on": "Authored on must be in past",
    }
    assert await db["service_requests"].count_documents({}) == 0


async def test_an_occurrence_is_a_date_time_or_a_period(api, db, patients, start_consumer) -> None:
    await start_consumer()
    encounter_id = await an_encounter(db)
    period = {"start": "2026-12-03T10:00:00Z", "end": "2026-12-03T11:00:00Z"}
    job = await submitted(api, submission_for(encounter_id, occurrence_period=period))
    assert job["status_code"] == "422", job


async def test_the_same_content_sent_twice_makes_two_service_requests(
    api, db, patients, start_consumer
) -> None:
    """The content has no id (the original's): each job's service request has its own."""
    await start_consumer()
    submission = submission_for(await an_encounter(db))
    first = await read_link(api, await submitted(api, submission))
    second = await read_link(api, await submitted(api, submission))
    assert first["id"] != second["id"]
    assert await db["service_requests"].count_documents({}) == 2

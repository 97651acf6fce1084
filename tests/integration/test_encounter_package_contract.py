"""eHealth's encounter package contract, end to end over a real broker and MongoDB: every
example of `examples/` posted over HTTP and published over AMQP ends as documented; the POST
answers what the original answers at once; a processed package answers the published page's
example key for key; real CMS signatures are verified, their signer recorded and checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from service.domain.jobs import VALIDATION_FAILED_MESSAGE, new_job_id
from service.signatures import CmsSignatureVerifier, encode_unsigned
from tests.conftest import bearer
from tests.harness import example, examples, package_content, poll
from tests.signing import TestCA

WRITE = bearer(scopes=("job:read", "encounter:write"))
READ = bearer()
PUBLISHED_PROCESSED = Path(__file__).resolve().parent / "published_examples" / "processed.json"

# example: (HTTP status of the POST, the job's status and status_code, or None: no job)
OUTCOMES = {
    "encounter_package": (202, ("processed", "200")),
    "failed_403_missing_scope": (403, None),
    "failed_404_unknown_patient": (404, None),
    "failed_409_inactive_patient": (409, None),
    "failed_422_invalid_package": (202, ("failed", "422")),
    "failed_422_business_rules": (202, ("failed", "422")),
}
# Over AMQP no request is answered: every example ends in its job.
AMQP_OUTCOMES = {
    "encounter_package": ("processed", "200"),
    "failed_403_missing_scope": ("failed", "403"),
    "failed_404_unknown_patient": ("failed", "404"),
    "failed_409_inactive_patient": ("failed", "409"),
    "failed_422_invalid_package": ("failed", "422"),
    "failed_422_business_rules": ("failed", "422"),
}


def headers_for(submission: dict) -> dict:
    scopes = tuple(submission["requested_by"]["scope"].split())
    return bearer(scopes=scopes)


async def post(api, submission: dict, headers: dict | None = None):
    path = f"/api/patients/{submission['patient_id']}/encounter_package"
    method = api.post if submission["type"].endswith("create") else api.patch
    response = await method(
        path, json=submission["data"], headers=headers or headers_for(submission)
    )
    return response, await response.json()


@pytest.mark.parametrize("name", sorted(OUTCOMES))
async def test_each_example_posted_over_http(api, start_consumer, name) -> None:
    await start_consumer()
    status, job_outcome = OUTCOMES[name]
    response, body = await post(api, example(name))
    assert response.status == status, body
    assert body["meta"]["code"] == status
    if job_outcome is None:
        assert "data" not in body and body["error"]["type"] in (
            "forbidden",
            "not_found",
            "request_conflict",
        )
        return
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    _, polled = await poll(api, job_id, READ)
    assert (polled["data"]["status"], polled["data"]["status_code"]) == job_outcome, polled


@pytest.mark.parametrize("name", sorted(AMQP_OUTCOMES))
async def test_each_example_published_over_amqp(api, publisher, start_consumer, name) -> None:
    await start_consumer()
    job_id = new_job_id()
    await publisher.publish(example(name), job_id, request_id=f"req-{job_id}")
    _, polled = await poll(api, job_id, READ)
    assert (polled["data"]["status"], polled["data"]["status_code"]) == AMQP_OUTCOMES[name], polled


async def test_the_post_answers_the_original_synchronous_checks(api, patients) -> None:
    """No broker is needed for these: nothing is queued, no job is made."""
    submission = example("encounter_package")
    unknown = {**submission, "patient_id": "00000000-0000-4000-8000-000000000000"}
    response, body = await post(api, unknown, WRITE)
    assert (response.status, body["error"]) == (
        404,
        {"type": "not_found", "message": "Patient not found"},
    )
    inactive = example("failed_409_inactive_patient")
    response, body = await post(api, inactive, WRITE)
    assert (response.status, body["error"]) == (
        409,
        {"type": "request_conflict", "message": "Person is not active"},
    )
    broken = {**submission, "data": {"visit": {"id": "x", "period": {}}, "encounter": {}}}
    response, body = await post(api, broken, WRITE)
    assert response.status == 422 and body["meta"]["code"] == 422
    assert body["error"]["type"] == "validation_failed"
    assert body["error"]["message"] == VALIDATION_FAILED_MESSAGE
    entries = {e["entry"]: e["rules"][0] for e in body["error"]["invalid"]}
    assert entries["$.signed_data"] == {
        "rule": "required",
        "params": [],
        "description": "required property signed_data was not present",
    }
    assert entries["$.encounter"]["rule"] == "schema"
    assert entries["$.visit.id"]["rule"] == "format"
    assert entries["$.visit.period.start"]["rule"] == "required"


async def test_a_422_speaks_the_original_vocabulary_from_the_content_root(api, start_consumer):
    await start_consumer()
    _, body = await post(api, example("failed_422_invalid_package"))
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    _, polled = await poll(api, job_id, READ)
    rules = {
        (e["entry"], rule["rule"])
        for e in polled["data"]["error"]["invalid"]
        for rule in e["rules"]
    }
    assert rules == {
        ("$.encounter.performer", "required"),
        ("$.encounter.class.code", "cast"),
        ("$.encounter.priority", "schema"),
        ("$.conditions.[0].onset_date", "datetime"),
        ("$.observations.[0].status", "cast"),
        ("$.immunizations.[0].id", "format"),
    }
    _, polled = await poll(api, await _posted(api, "failed_422_business_rules"), READ)
    entries = {e["entry"]: e["rules"][0]["description"] for e in polled["data"]["error"]["invalid"]}
    assert entries == {
        "$.encounter.episode.identifier.value": "Episode with such ID is not found",
        "$.encounter.diagnoses[0].condition.identifier.value": (
            "Condition with such id is not found"
        ),
        "$.observations[0].context.identifier.value": (
            "Submitted context is not allowed for the observation"
        ),
    }


async def _posted(api, name: str) -> str:
    _, body = await post(api, example(name))
    return body["data"]["links"][0]["href"].rsplit("/", 1)[1]


async def test_an_encounter_sent_twice_is_the_original_422(api, start_consumer) -> None:
    await start_consumer()
    submission = example("encounter_package")
    first = await _posted_submission(api, submission)
    await poll(api, first, READ)
    again = {**submission, "data": {**submission["data"]}}
    again["data"]["visit"] = {
        **again["data"]["visit"],
        "id": "7d0c2a1e-4b3f-4e5d-8c6b-9a0f1e2d3c4b",
    }
    _, polled = await poll(api, await _posted_submission(api, again), READ)
    # The encounter is the package's root: the rest is not even tried.
    assert polled["data"]["error"]["invalid"] == [
        {
            "entry_type": "json_data_property",
            "entry": "$.encounter.id",
            "rules": [
                {
                    "rule": "invalid",
                    "params": [],
                    "description": "Encounter with such id already exists",
                }
            ],
        }
    ]


async def test_ids_another_package_holds_are_reported_together(api, db, start_consumer) -> None:
    await start_consumer()
    first = example("encounter_package")
    await poll(api, await _posted_submission(api, first), READ)
    second = example("encounter_package")
    content, taken = package_content(second), package_content(first)
    # Its condition and its device are the first package's; the rest is new.
    old_condition, old_device = content["conditions"][0]["id"], content["devices"][0]["id"]
    condition_id, device_id = taken["conditions"][0]["id"], taken["devices"][0]["id"]
    text = json.dumps(content).replace(old_condition, condition_id)
    content = json.loads(text.replace(old_device, device_id))
    second["data"]["signed_data"] = encode_unsigned(content)
    _, polled = await poll(api, await _posted_submission(api, second), READ)
    entries = {e["entry"]: e["rules"][0]["description"] for e in polled["data"]["error"]["invalid"]}
    assert entries == {
        "$.conditions[0].id": f"Condition with id '{condition_id}' already exists",
        "$.devices[0].id": f"Device with id '{device_id}' already exists",
    }
    # Nothing of the second package stays; the first is whole.
    assert await db["encounters"].count_documents({"_id": content["encounter"]["id"]}) == 0
    assert await db["conditions"].count_documents({}) == 1


async def _posted_submission(api, submission: dict) -> str:
    _, body = await post(api, submission)
    return body["data"]["links"][0]["href"].rsplit("/", 1)[1]


async def test_a_processed_package_answers_the_published_example_key_for_key(
    api, start_consumer
) -> None:
    await start_consumer()
    submission = example("encounter_package")
    response, body = await poll(api, await _posted_submission(api, submission), READ)
    published = json.loads(PUBLISHED_PROCESSED.read_text())
    assert response.status == published["meta"]["code"] == 303
    assert body.keys() == published.keys()
    assert body["data"].keys() == published["data"].keys()
    assert body["meta"].keys() == published["meta"].keys()
    # The page's typos (`medication_statemet`, `medication_administration` and `procedure` as
    # collections) are the page's; the entities and their order are the same.
    page = [link["entity"].replace("statemet", "statement") for link in published["data"]["links"]]
    assert [link["entity"] for link in body["data"]["links"]] == page
    patient = submission["patient_id"]
    for link in body["data"]["links"]:
        assert re.fullmatch(
            rf"/api/patients/{patient}/{link['entity']}s/[0-9a-f-]{{36}}", link["href"]
        ), link
        read = await api.get(link["href"], headers=bearer(scopes=(f"{link['entity']}:read",)))
        assert read.status == 200, link


async def test_meta_url_is_scheme_host_and_path(api, patients) -> None:
    response = await api.get(f"/api/jobs/{new_job_id()}?wait=1&x=y", headers=READ)
    url = (await response.json())["meta"]["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith(
        "/api/jobs/" + url.rsplit("/", 1)[1]
    )
    assert "?" not in url


async def test_a_cancel_marks_what_it_names_entered_in_error(api, db, start_consumer) -> None:
    await start_consumer()
    created, cancel = examples("encounter_package", "cancel_encounter_package")
    await poll(api, await _posted_submission(api, created), READ)
    _, polled = await poll(api, await _posted_submission(api, cancel), READ)
    assert polled["data"]["status"] == "processed", polled
    content = package_content(created)
    encounter = await db["encounters"].find_one({"_id": content["encounter"]["id"]})
    assert encounter["status"] == "entered_in_error"
    assert encounter["explanatory_letter"] == "Entered for the wrong patient"
    condition = await db["conditions"].find_one({"_id": content["conditions"][0]["id"]})
    assert condition["verification_status"] == "entered_in_error"
    # Once is all: the same entities cannot be cancelled again.
    again = {**cancel, "data": {"signed_data": cancel["data"]["signed_data"]}}
    _, polled = await poll(api, await _posted_submission(api, again), READ)
    assert polled["data"]["status_code"] == "409"
    assert polled["data"]["error"]["message"] == (
        "Invalid transition for encounter - already entered_in_error"
    )


async def test_a_cancel_must_repeat_what_was_created(api, start_consumer) -> None:
    await start_consumer()
    created, cancel = examples("encounter_package", "cancel_encounter_package")
    await poll(api, await _posted_submission(api, created), READ)
    content = package_content(cancel)
    content["conditions"][0]["clinical_status"] = "resolved"
    changed = {**cancel, "data": {"signed_data": encode_unsigned(content)}}
    _, polled = await poll(api, await _posted_submission(api, changed), READ)
    assert polled["data"]["status_code"] == "409"
    assert polled["data"]["error"]["message"] == (
        "Submitted signed content does not correspond to previously created content: "
        "conditions.0.clinical_status"
    )


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


async def test_signed_packages_are_verified_and_their_signer_recorded(
    api, db: AsyncDatabase, start_consumer, ca: TestCA
) -> None:
    await start_consumer(signatures=CmsSignatureVerifier([ca.certificate]))
    doctor = ca.issue("Olena Doctor", tax_id="3126509816")
    submission = example("encounter_package")
    content = package_content(submission)
    signed = {**submission, "data": {**submission["data"], "signed_data": doctor.sign(content)}}
    user = bearer(scopes=("job:read", "encounter:write"), user_id="demo-doctor")
    _, body = await post(api, signed, user)
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    _, polled = await poll(api, job_id, READ)
    assert polled["data"]["status"] == "processed", polled
    encounter = await db["encounters"].find_one({"_id": content["encounter"]["id"]})
    assert encounter["signed_by"]["tax_id"] == "3126509816"
    assert encounter["signed_by"]["serial_number"] == format(doctor.certificate.serial_number, "x")

    someone = ca.issue("Somebody Else", tax_id="1111111111")
    other = example("encounter_package")
    other["data"]["signed_data"] = someone.sign(package_content(other))
    _, body = await post(api, other, user)
    _, polled = await poll(api, body["data"]["links"][0]["href"].rsplit("/", 1)[1], READ)
    assert (polled["data"]["status_code"], polled["data"]["error"]) == (
        "409",
        {"type": "request_conflict", "message": "Does not match the signer drfo"},
    )

    stranger = TestCA("Not trusted").issue(tax_id="3126509816")
    untrusted = example("encounter_package")
    untrusted["data"]["signed_data"] = stranger.sign(package_content(untrusted))
    _, body = await post(api, untrusted, user)
    _, polled = await poll(api, body["data"]["links"][0]["href"].rsplit("/", 1)[1], READ)
    assert polled["data"]["status_code"] == "422"
    assert polled["data"]["error"]["invalid"] == [
        {
            "entry_type": "json_data_property",
            "entry": "$.signed_data",
            "rules": [{"rule": "invalid", "params": [], "description": "Invalid signed content"}],
        }
    ]


async def test_the_cancel_example_published_over_amqp(api, publisher, start_consumer) -> None:
    await start_consumer()
    created, cancel = examples("encounter_package", "cancel_encounter_package")
    for submission in (created, cancel):
        job_id = new_job_id()
        await publisher.publish(submission, job_id, request_id=f"req-{job_id}")
        _, polled = await poll(api, job_id, READ)
        assert polled["data"]["status"] == "processed", polled
    # The cancel links what it marked: the encounter and its ten entities.
    assert len(polled["data"]["links"]) == 11

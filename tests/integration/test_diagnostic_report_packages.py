"""eHealth's diagnostic report package, end to end over a real broker and MongoDB: created over
HTTP and through AMQP, its links read back; the `oneOf` rules and the business rules as the
original words them; ids another package holds; cancelled, once only, only as created; a cancel
refused on a delivery again gives its marks back; a signed package's signer is who recorded
it."""

from __future__ import annotations

import copy
import re
import uuid

import orjson
import pytest

from consumers.processors.diagnostic_report_package_create import check_diagnostic_report_package
from consumers.processors.package_model import PackageFacts
from service.cli.demo import DEMO_CLIENT, DEMO_DOCTOR
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus, new_job_id
from service.signatures import CmsSignatureVerifier, encode_unsigned
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import Delivery
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, example, examples, package_content, poll
from tests.integration.conftest import make_processor
from tests.signing import TestCA

WRITE = bearer(scopes=("job:read", "diagnostic_report:write"))
READ = bearer()
PATH = f"/api/patients/{ACTIVE_PATIENT}/diagnostic_report_package"


class SimulatedCrash(BaseException):
    """The process dies here: not an exception the processor may catch and handle."""


def with_content(submission: dict, content: dict) -> dict:
    return {**submission, "data": {"signed_data": encode_unsigned(content)}}


def reference(code: str, value: str) -> dict:
    coding = [{"system": "eHealth/resources", "code": code}]
    return {"identifier": {"type": {"coding": coding}, "value": value}}


async def submitted(api, submission: dict, headers: dict = WRITE) -> dict:
    """The job's data once it is no longer pending."""
    method = api.post if submission["type"].endswith(".create") else api.patch
    response = await method(PATH, json=submission["data"], headers=headers)
    body = await response.json()
    assert response.status == 202, body
    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[1]
    _, polled = await poll(api, job_id, READ)
    return polled["data"]


def descriptions(job: dict) -> dict[str, str]:
    assert job["status_code"] == "422", job
    return {e["entry"]: e["rules"][0]["description"] for e in job["error"]["invalid"]}


async def test_a_package_posted_over_http_links_what_it_wrote(api, db, start_consumer) -> None:
    await start_consumer()
    submission = example("diagnostic_report_package")
    content = package_content(submission)
    job = await submitted(api, submission)
    assert (job["status"], job["status_code"]) == ("processed", "200"), job
    report_id = content["diagnostic_report"]["id"]
    observation_ids = [o["id"] for o in content["observations"]]
    patient = f"/api/patients/{ACTIVE_PATIENT}"
    assert job["links"] == [
        {"entity": "diagnostic_report", "href": f"{patient}/diagnostic_reports/{report_id}"},
        *(
            {"entity": "observation", "href": f"{patient}/observations/{observation_id}"}
            for observation_id in observation_ids
        ),
    ]
    for link in job["links"]:
        response = await api.get(link["href"], headers=bearer(scopes=(f"{link['entity']}:read",)))
        read = await response.json()
        assert response.status == 200, read
        assert read["data"]["id"] == link["href"].rsplit("/", 1)[1]
    report = await (
        await api.get(job["links"][0]["href"], headers=bearer(scopes=("diagnostic_report:read",)))
    ).json()
    assert report["data"]["conclusion"] == content["diagnostic_report"]["conclusion"]
    assert report["data"]["recorded_by"]["identifier"]["value"] == DEMO_DOCTOR
    stored = await db["observations"].find({"diagnostic_report_id": report_id}).to_list()
    assert sorted(o["_id"] for o in stored) == sorted(observation_ids)
    assert all(o["patient_id"] == ACTIVE_PATIENT and o["status"] == "valid" for o in stored)


async def test_a_package_published_over_amqp_is_processed(api, publisher, start_consumer):
    await start_consumer()
    submission = example("diagnostic_report_package")
    job_id = new_job_id()
    await publisher.publish(submission, job_id, request_id=f"req-{job_id}")
    _, polled = await poll(api, job_id, READ)
    assert (polled["data"]["status"], polled["data"]["status_code"]) == ("processed", "200")
    assert [link["entity"] for link in polled["data"]["links"]] == [
        "diagnostic_report",
        "observation",
        "observation",
    ]
    for link in polled["data"]["links"]:
        assert re.fullmatch(
            rf"/api/patients/{ACTIVE_PATIENT}/{link['entity']}s/[0-9a-f-]{{36}}", link["href"]
        )
        read = await api.get(link["href"], headers=bearer(scopes=(f"{link['entity']}:read",)))
        assert read.status == 200, link


async def test_the_post_and_the_patch_check_the_envelope_and_the_scope_at_once(api, db, patients):
    response = await api.post(PATH, json={"signed_data": "", "visit": {}}, headers=WRITE)
    body = await response.json()
    assert response.status == 422, body
    rules = {(e["entry"], e["rules"][0]["rule"]) for e in body["error"]["invalid"]}
    assert rules == {("$.signed_data", "length"), ("$.visit", "schema")}
    response = await api.patch(PATH, json={}, headers=WRITE)
    assert response.status == 422
    data = example("diagnostic_report_package")["data"]
    response = await api.post(PATH, json=data, headers=bearer(scopes=("encounter:write",)))
    assert response.status == 403
    assert await db["jobs"].count_documents({}) == 0


async def test_the_one_of_rules_are_the_original_422(api, start_consumer) -> None:
    await start_consumer()
    submission = example("diagnostic_report_package")
    content = package_content(submission)
    content["observations"][0]["value_string"] = "138 g/L"
    content["observations"][1]["effective_period"] = {
        "start": "2026-12-01T08:00:00Z",
        "end": "2026-12-01T08:30:00Z",
    }
    del content["observations"][1]["value_quantity"]
    content["diagnostic_report"]["performer"]["text"] = "Olena"
    job = await submitted(api, with_content(submission, content))
    assert job["status_code"] == "422", job
    rules = [
        (e["entry"], e["rules"][0]["rule"], e["rules"][0]["description"])
        for e in job["error"]["invalid"]
    ]
    only_one, at_least_one = (
        "Only one of the parameters must be present",
        "At least one of the parameters must be present",
    )
    assert rules == [
        ("$.diagnostic_report.performer.reference", "oneOf", only_one),
        ("$.diagnostic_report.performer.text", "oneOf", only_one),
        ("$.observations[1].effective_date_time", "oneOf", only_one),
        ("$.observations[1].effective_period", "oneOf", only_one),
        ("$.observations[0].value_quantity", "oneOf", only_one),
        ("$.observations[0].value_string", "oneOf", only_one),
        ("$.observations[1]", "oneOf", at_least_one),
    ]


async def test_a_schema_422_speaks_from_the_content_root(api, start_consumer) -> None:
    await start_consumer()
    submission = example("diagnostic_report_package")
    content = package_content(submission)
    report = content["diagnostic_report"]
    report["primary_source"] = False
    report["encounter"] = reference("encounter", str(uuid.uuid4()))
    del report["managing_organization"]
    report["code"]["identifier"]["type"]["coding"][0]["code"] = "service_group"
    del content["observations"][0]["diagnostic_report"]
    content["observations"][1]["context"] = reference("encounter", str(uuid.uuid4()))
    job = await submitted(api, with_content(submission, content))
    assert job["status_code"] == "422", job
    rules = {(e["entry"], e["rules"][0]["rule"]) for e in job["error"]["invalid"]}
    assert rules == {
        ("$.diagnostic_report.primary_source", "inclusion"),
        ("$.diagnostic_report.encounter", "schema"),
        ("$.diagnostic_report.managing_organization", "required"),
        ("$.diagnostic_report.code.identifier.type.coding.[0].code", "inclusion"),
        ("$.observations.[0].diagnostic_report", "required"),
        ("$.observations.[1].context", "schema"),
    }


async def test_the_business_rules_are_reported_all_at_once(api, db, start_consumer) -> None:
    await start_consumer()
    registries = RegistryStore(db)
    nurse, stranger = str(uuid.uuid4()), str(uuid.uuid4())
    await registries.put(
        "employees",
        {
            "_id": nurse,
            "status": "APPROVED",
            "employee_type": "NURSE",
            "legal_entity_id": DEMO_CLIENT,
        },
    )
    await registries.put(
        "employees",
        {"_id": stranger, "status": "APPROVED", "employee_type": "DOCTOR", "legal_entity_id": "x"},
    )
    submission = example("diagnostic_report_package")
    content = package_content(submission)
    report = content["diagnostic_report"]
    unknown, other_report = str(uuid.uuid4()), str(uuid.uuid4())
    report["recorded_by"]["identifier"]["value"] = unknown
    report["results_interpreter"]["reference"]["identifier"]["value"] = nurse
    report["managing_organization"]["identifier"]["value"] = str(uuid.uuid4())
    report["based_on"] = reference("service_request", str(uuid.uuid4()))
    report["issued"] = "2099-01-01T00:00:00Z"
    first, second = content["observations"]
    first["diagnostic_report"]["identifier"]["value"] = other_report
    first["performer"]["identifier"]["value"] = stranger
    second["issued"] = "2099-01-01T00:00:00Z"
    del second["performer"]
    job = await submitted(api, with_content(submission, content))
    assert descriptions(job) == {
        "$.observations[0].diagnostic_report.identifier.value": (
            "Submitted diagnostic report is not allowed for the observation"
        ),
        "$.observations[0].performer.identifier.value": (
            f"Employee {stranger} doesn't belong to your legal entity"
        ),
        "$.observations[1].performer": "performer must be present if primary_source is true",
        "$.observations[1].issued": "Issued must be in past",
        "$.diagnostic_report.recorded_by.identifier.value": "Employee with such ID is not found",
        "$.diagnostic_report.results_interpreter.reference.identifier.value": (
            "Employee is not an active doctor"
        ),
        "$.diagnostic_report.managing_organization.identifier.value": (
            "LegalEntity with such ID is not found"
        ),
        "$.diagnostic_report.based_on.identifier.value": (
            "Service request with such id is not found"
        ),
        "$.diagnostic_report.issued": "Issued must be in past",
    }
    assert {e["rules"][0]["rule"] for e in job["error"]["invalid"]} == {"invalid", "required"}
    assert await db["diagnostic_reports"].count_documents({}) == 0
    assert await db["observations"].count_documents({}) == 0


def test_the_rules_take_a_report_issued_that_is_no_date_time_as_the_original_casts_it() -> None:
    content = package_content(example("diagnostic_report_package"))
    content["diagnostic_report"]["issued"] = "yesterday"
    facts = PackageFacts(
        employees={
            DEMO_DOCTOR: {
                "status": "APPROVED",
                "employee_type": "DOCTOR",
                "legal_entity_id": DEMO_CLIENT,
            }
        },
        legal_entities={DEMO_CLIENT: {"status": "ACTIVE"}},
    )
    for observation in content["observations"]:
        observation["issued"] = utcnow()
    assert check_diagnostic_report_package(content, facts, client_id=DEMO_CLIENT, now=utcnow()) == [
        {
            "entry_type": "json_data_property",
            "entry": "$.diagnostic_report.issued",
            "rules": [{"rule": "cast", "params": ["utc_datetime"], "description": "is invalid"}],
        }
    ]


async def test_a_report_sent_twice_is_the_original_422(api, db, start_consumer) -> None:
    await start_consumer()
    submission = example("diagnostic_report_package")
    assert (await submitted(api, submission))["status"] == "processed"
    # Sent again once processed (an identical pending one would be the same job).
    again = await submitted(api, submission)
    report_id = package_content(submission)["diagnostic_report"]["id"]
    # The report is the package's root: its observations are not even tried.
    assert again["error"]["invalid"] == [
        {
            "entry_type": "json_data_property",
            "entry": "$.diagnostic_report.id",
            "rules": [
                {
                    "rule": "invalid",
                    "params": [],
                    "description": f"Diagnostic report with id '{report_id}' already exists",
                }
            ],
        }
    ]
    assert await db["diagnostic_reports"].count_documents({}) == 1


async def test_an_observation_another_package_holds_leaves_nothing(api, db, start_consumer):
    await start_consumer()
    first = example("diagnostic_report_package")
    assert (await submitted(api, first))["status"] == "processed"
    second = example("diagnostic_report_package")
    content = package_content(second)
    taken = package_content(first)["observations"][1]["id"]
    content["observations"][1]["id"] = taken
    job = await submitted(api, with_content(second, content))
    assert descriptions(job) == {
        "$.observations[1].id": f"Observation with id '{taken}' already exists"
    }
    # Nothing of the second package stays; the first is whole.
    second_report = content["diagnostic_report"]["id"]
    assert await db["diagnostic_reports"].count_documents({"_id": second_report}) == 0
    assert await db["observations"].count_documents({}) == 2
    first_report = package_content(first)["diagnostic_report"]["id"]
    held = await db["observations"].find_one({"_id": taken})
    assert held["diagnostic_report_id"] == first_report


async def test_a_cancel_marks_what_it_names_once_only(api, db, start_consumer) -> None:
    await start_consumer()
    created, cancel = examples("diagnostic_report_package", "cancel_diagnostic_report_package")
    assert (await submitted(api, created))["status"] == "processed"
    job = await submitted(api, cancel)
    assert (job["status"], job["status_code"]) == ("processed", "200"), job
    content = package_content(cancel)
    report_id = content["diagnostic_report"]["id"]
    patient = f"/api/patients/{ACTIVE_PATIENT}"
    assert [link["href"] for link in job["links"]] == [
        f"{patient}/diagnostic_reports/{report_id}",
        *(f"{patient}/observations/{o['id']}" for o in content["observations"]),
    ]
    report = await db["diagnostic_reports"].find_one({"_id": report_id})
    assert report["status"] == "entered_in_error"
    assert report["explanatory_letter"] == "Entered for the wrong patient"
    assert report["cancellation_reason"] == content["diagnostic_report"]["cancellation_reason"]
    for observation in content["observations"]:
        stored = await db["observations"].find_one({"_id": observation["id"]})
        assert stored["status"] == "entered_in_error"
    read = await api.get(
        job["links"][0]["href"], headers=bearer(scopes=("diagnostic_report:read",))
    )
    assert (await read.json())["data"]["status"] == "entered_in_error"

    again = await submitted(api, {**cancel, "data": {"signed_data": cancel["data"]["signed_data"]}})
    assert (again["status_code"], again["error"]) == (
        "409",
        {
            "type": "request_conflict",
            "message": "Invalid transition for diagnostic_report - already entered_in_error",
        },
    )


async def test_a_cancel_of_an_observation_leaves_the_package_not_cancellable_again(
    api, db, start_consumer
) -> None:
    await start_consumer()
    created, cancel = examples("diagnostic_report_package", "cancel_diagnostic_report_package")
    assert (await submitted(api, created))["status"] == "processed"
    content = package_content(cancel)
    whole = copy.deepcopy(content)
    content["diagnostic_report"]["status"] = "final"
    content["observations"][1]["status"] = "valid"
    job = await submitted(api, with_content(cancel, content))
    assert job["status"] == "processed", job
    assert [link["entity"] for link in job["links"]] == ["observation"]
    report = await db["diagnostic_reports"].find_one({"_id": content["diagnostic_report"]["id"]})
    assert report["status"] == "final"
    # The original refuses a package any of whose entities is cancelled already.
    again = await submitted(api, with_content(cancel, whole))
    assert again["error"]["message"] == (
        "Invalid transition for observation - already entered_in_error"
    )


async def test_a_cancel_is_refused_as_the_original_refuses_it(api, start_consumer) -> None:
    await start_consumer()
    created, cancel = examples("diagnostic_report_package", "cancel_diagnostic_report_package")
    assert (await submitted(api, created))["status"] == "processed"
    content = package_content(cancel)

    changed = copy.deepcopy(content)
    changed["observations"][1]["value_quantity"]["value"] = 6.5
    job = await submitted(api, with_content(cancel, changed))
    assert (job["status_code"], job["error"]["message"]) == (
        "409",
        "Submitted signed content does not correspond to previously created content: "
        "observations.1.value_quantity.value",
    )

    foreign = copy.deepcopy(content)
    foreign["observations"][0]["id"] = str(uuid.uuid4())
    job = await submitted(api, with_content(cancel, foreign))
    assert job["error"]["message"].endswith("content: observations.0.id")

    nothing = copy.deepcopy(content)
    nothing["diagnostic_report"]["status"] = "final"
    for observation in nothing["observations"]:
        observation["status"] = "valid"
    job = await submitted(api, with_content(cancel, nothing))
    assert (job["status_code"], job["error"]["message"]) == (
        "409",
        'At least one entity should have status "entered_in_error"',
    )

    unknown = copy.deepcopy(content)
    unknown["diagnostic_report"]["id"] = str(uuid.uuid4())
    job = await submitted(api, with_content(cancel, unknown))
    assert (job["status_code"], job["error"]) == ("404", "Diagnostic report not found")

    missing = copy.deepcopy(content)
    del missing["diagnostic_report"]["cancellation_reason"]
    job = await submitted(api, with_content(cancel, missing))
    assert descriptions(job) == {
        "$.diagnostic_report.cancellation_reason": (
            "required property cancellation_reason was not present"
        )
    }


async def test_a_cancel_refused_when_delivered_again_takes_its_marks_back(db, patients) -> None:
    created, cancel = examples("diagnostic_report_package", "cancel_diagnostic_report_package")
    done = await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(created)))
    assert done["status"] == JobStatus.PROCESSED
    delivery = Delivery(new_job_id(), orjson.dumps(cancel))
    processor = make_processor(db)

    async def crash(*_args, **_kwargs):
        raise SimulatedCrash

    processor.jobs.finish = crash  # the process dies once the entities are marked
    with pytest.raises(SimulatedCrash):
        await processor.process(delivery)
    content = package_content(cancel)
    report_id = content["diagnostic_report"]["id"]
    marked = await db["diagnostic_reports"].find_one({"_id": report_id})
    assert marked["status"] == "entered_in_error"

    # Before the broker delivers it again, the patient is no longer active.
    await PatientStore(db).put(ACTIVE_PATIENT, "inactive")
    refused = await make_processor(db).process(delivery)
    assert (refused["status"], refused["status_code"]) == (JobStatus.FAILED, 409)
    report = await db["diagnostic_reports"].find_one({"_id": report_id})
    assert report["status"] == "final" and "cancelled_by_job" not in report
    for observation in content["observations"]:
        stored = await db["observations"].find_one({"_id": observation["id"]})
        assert stored["status"] == "valid" and "cancelled_by_job" not in stored


async def test_a_signed_package_is_signed_by_who_recorded_it(api, db, start_consumer) -> None:
    ca = TestCA()
    await start_consumer(signatures=CmsSignatureVerifier([ca.certificate]))
    user = bearer(scopes=("job:read", "diagnostic_report:write"), user_id="demo-doctor")
    doctor = ca.issue("Olena Doctor", tax_id="3126509816")
    submission = example("diagnostic_report_package")
    content = package_content(submission)
    job = await submitted(api, {**submission, "data": {"signed_data": doctor.sign(content)}}, user)
    assert job["status"] == "processed", job
    report = await db["diagnostic_reports"].find_one({"_id": content["diagnostic_report"]["id"]})
    assert report["signed_by"]["tax_id"] == "3126509816"

    someone = ca.issue("Somebody Else", tax_id="1111111111")
    other = example("diagnostic_report_package")
    signed = someone.sign(package_content(other))
    job = await submitted(api, {**other, "data": {"signed_data": signed}}, user)
    assert (job["status_code"], job["error"]) == (
        "409",
        {"type": "request_conflict", "message": "Does not match the signer drfo"},
    )
    # Who recorded it is not known: the business rules say so, not the signer's check.
    unknown = example("diagnostic_report_package")
    content = package_content(unknown)
    content["diagnostic_report"]["recorded_by"]["identifier"]["value"] = str(uuid.uuid4())
    job = await submitted(api, {**unknown, "data": {"signed_data": doctor.sign(content)}}, user)
    assert descriptions(job) == {
        "$.diagnostic_report.recorded_by.identifier.value": "Employee with such ID is not found"
    }


async def test_another_legal_entity_cannot_cancel_a_report(api, publisher, start_consumer):
    """In every signature mode: only the client that recorded the report cancels it."""
    await start_consumer()
    created, cancel = examples("diagnostic_report_package", "cancel_diagnostic_report_package")
    assert (await submitted(api, created))["status"] == "processed"
    other = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    foreign = {**cancel, "requested_by": {**cancel["requested_by"], "client_id": other}}
    job_id = new_job_id()
    await publisher.publish(foreign, job_id, request_id=job_id)
    _, polled = await poll(api, job_id, bearer(client_id=other))
    assert polled["data"]["status_code"] == "422", polled
    assert descriptions(polled["data"]) == {
        "$.managing_organization.identifier.value": (
            "Managing_organization does not correspond to user's legal_entity"
        )
    }

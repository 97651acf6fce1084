"""The business rules of a package create, pure: the package, the facts a job read for it,
and every rule the original's package create checks, each at its path, in its words."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from consumers.processors.package_checks import check_package, signer_conflict
from consumers.processors.package_model import PackageFacts
from schemas.one_of import AT_LEAST_ONE, ONLY_ONE, PACKAGE_ONE_OF, check_one_of
from schemas.package_content import PACKAGE_CREATE_CONTENT
from service.cli.demo import (
    DEMO_CLIENT,
    DEMO_DOCTOR,
    DEMO_DOCTOR_TAX_ID,
    DEMO_USER,
    demo_episode,
    demo_records,
)
from service.signatures import Signer
from tests.harness import example, package_content

NOW = datetime.now(UTC)


def package() -> tuple[dict, dict]:
    """The example package (dates yesterday) as loaded, and its visit."""
    submission = example("encounter_package")
    visit = submission["data"]["visit"]
    visit = {
        "id": visit["id"],
        "period": {
            name: datetime.fromisoformat(value.replace("Z", "+00:00"))
            for name, value in visit["period"].items()
        },
    }
    return PACKAGE_CREATE_CONTENT.load(package_content(submission)), visit


def facts() -> PackageFacts:
    records = demo_records()
    division = records["divisions"][0]
    return PackageFacts(
        employees={e["_id"]: e for e in records["employees"]},
        division=division,
        episode=demo_episode(),
        legal_entities={e["_id"]: e for e in records["legal_entities"]},
        stored={},
    )


def broken(content: dict, visit: dict | None, known: PackageFacts) -> dict[str, list[str]]:
    entries = check_package(content, visit, known, client_id=DEMO_CLIENT, now=NOW)
    found: dict[str, list[str]] = {}
    for entry in entries:  # one entry per broken rule, as the original renders them
        found.setdefault(entry["entry"], []).extend(r["description"] for r in entry["rules"])
    return found


def test_the_example_breaks_no_rule() -> None:
    content, visit = package()
    assert broken(content, visit, facts()) == {}


def _set_ref(path: list, value: str):
    def change(content: dict, _: PackageFacts) -> None:
        node = content
        for part in path:
            node = node[part]
        node["identifier"]["value"] = value

    return change


OTHER = "0f0e0d0c-0b0a-4909-8807-060504030201"
PERFORMER = "$.encounter.performer.identifier.value"


def _employee(**changes):
    def change(_: dict, known: PackageFacts) -> None:
        known.employees[DEMO_DOCTOR] = {**known.employees[DEMO_DOCTOR], **changes}

    return change


@pytest.mark.parametrize(
    ("change", "entry", "description"),
    [
        (
            _employee(employee_type="NURSE"),
            PERFORMER,
            "Employee submitted as a care_manager is not a doctor",
        ),
        (
            _employee(status="DISMISSED"),
            PERFORMER,
            "Doctor submitted as a care_manager is not active",
        ),
        (
            _employee(legal_entity_id=OTHER),
            PERFORMER,
            f"Employee {DEMO_DOCTOR} doesn't belong to your legal entity",
        ),
        (
            lambda c, f: f.employees.clear(),
            "$.conditions[0].asserter.identifier.value",
            "Employee with such ID is not found",
        ),
        (
            lambda c, f: setattr(f, "division", {**f.division, "status": "INACTIVE"}),
            "$.encounter.division.identifier.value",
            "Division is not active",
        ),
        (
            lambda c, f: setattr(f, "division", None),
            "$.encounter.division.identifier.value",
            "Division with such ID is not found",
        ),
        (
            lambda c, f: setattr(f, "episode", None),
            "$.encounter.episode.identifier.value",
            "Episode with such ID is not found",
        ),
        (
            lambda c, f: setattr(f, "episode", {**f.episode, "status": "closed"}),
            "$.encounter.episode.identifier.value",
            "Episode is not active",
        ),
        (
            lambda c, f: f.episode["managing_organization"]["identifier"].update(value=OTHER),
            "$.encounter.episode.identifier.value",
            "Managing_organization does not correspond to user's legal_entity",
        ),
        (
            _set_ref(["encounter", "visit"], OTHER),
            "$.encounter.visit.identifier.value",
            "Visit with such ID is not found",
        ),
        (
            _set_ref(["encounter", "diagnoses", 0, "condition"], OTHER),
            "$.encounter.diagnoses[0].condition.identifier.value",
            "Condition with such id is not found",
        ),
        (
            lambda c, f: c["encounter"]["diagnoses"][0]["role"]["coding"][0].update(
                code="comorbidity"
            ),
            "$.encounter.diagnoses",
            "Encounter must have at least one chief complaint",
        ),
        (
            lambda c, f: c["encounter"].update(date=NOW + timedelta(hours=1)),
            "$.encounter.date",
            "Date must be in past",
        ),
        (
            lambda c, f: c["encounter"].update(date=NOW - timedelta(days=8)),
            "$.encounter.date",
            f"Date must be greater than {(NOW - timedelta(days=7)).date().isoformat()}",
        ),
        (
            _set_ref(["observations", 0, "context"], OTHER),
            "$.observations[0].context.identifier.value",
            "Submitted context is not allowed for the observation",
        ),
        (
            _set_ref(["diagnostic_reports", 0, "encounter"], OTHER),
            "$.diagnostic_reports[0].encounter.identifier.value",
            "Submitted context is not allowed for the diagnostic report",
        ),
        (
            _set_ref(["observations", 0, "diagnostic_report"], OTHER),
            "$.observations[0].diagnostic_report.identifier.value",
            "Invalid reference",
        ),
        (
            _set_ref(["conditions", 0, "evidences", 0, "details", 0], OTHER),
            "$.conditions[0].evidences[0].details[0].identifier.value",
            "Observation with such id is not found",
        ),
        (
            lambda c, f: c["conditions"][0].pop("asserter"),
            "$.conditions[0].asserter",
            "asserter must be present if primary_source is true",
        ),
        (
            lambda c, f: c["conditions"].append(copy.deepcopy(c["conditions"][0])),
            "$.conditions",
            "All primary keys must be unique",
        ),
        (
            lambda c, f: c["immunizations"][0].update(date=NOW + timedelta(days=1)),
            "$.immunizations[0].date",
            "Date must be in past",
        ),
        (
            lambda c, f: c["encounter"].update(
                incoming_referral={"identifier": {"type": {"coding": []}, "value": OTHER}}
            ),
            "$.encounter.incoming_referral.identifier.value",
            "Service request with such id is not found",
        ),
        (
            lambda c, f: f.legal_entities.clear(),
            "$.diagnostic_reports[0].managing_organization.identifier.value",
            "LegalEntity with such ID is not found",
        ),
    ],
)
def test_each_rule_is_reported_at_its_path(change, entry, description) -> None:
    content, visit = package()
    known = facts()
    change(content, known)
    found = broken(content, visit, known)
    assert entry in found, found
    assert description in found[entry]


def test_every_broken_rule_is_reported_at_once() -> None:
    content, visit = package()
    known = facts()
    known.employees.clear()
    known.episode = None
    content["encounter"]["date"] = NOW + timedelta(days=1)
    found = broken(content, visit, known)
    assert PERFORMER in found
    assert "$.encounter.episode.identifier.value" in found
    assert "$.encounter.date" in found
    assert len(found) > 10  # every asserter and performer of the package too


def test_an_observation_of_another_stored_entity_that_is_entered_in_error() -> None:
    content, visit = package()
    content["observations"] = []
    content["conditions"][0]["evidences"][0]["details"][0]["identifier"]["value"] = OTHER
    known = facts()
    known.stored["observations"] = {OTHER: {"_id": OTHER, "status": "entered_in_error"}}
    found = broken(content, visit, known)
    assert found["$.conditions[0].evidences[0].details[0].identifier.value"] == [
        'Observation in "entered_in_error" status can not be referenced'
    ]


def test_the_visit_of_the_envelope() -> None:
    content, visit = package()
    visit["period"] = {"start": NOW + timedelta(hours=2), "end": NOW + timedelta(hours=1)}
    found = broken(content, visit, facts())
    assert found["$.visit.period.start"] == ["Start date must be in past"]
    assert found["$.visit.period.end"] == [
        "End date must be in past",
        "End date must be greater than or equal the start date",
    ]


DOCTOR = demo_records()["employees"][0]


def signer(tax_id: str | None) -> Signer:
    return Signer("CN=Doctor", "1f", NOW - timedelta(days=1), NOW + timedelta(days=1), tax_id)


@pytest.mark.parametrize(
    ("who", "performer", "user", "conflict"),
    [
        (None, DOCTOR, DEMO_USER, None),  # decode mode: nobody to check
        (signer(DEMO_DOCTOR_TAX_ID), DOCTOR, DEMO_USER, None),
        (signer(f" {DEMO_DOCTOR_TAX_ID[:5]} {DEMO_DOCTOR_TAX_ID[5:]}"), DOCTOR, DEMO_USER, None),
        (signer(None), DOCTOR, DEMO_USER, "Invalid drfo"),
        (signer("1111111111"), DOCTOR, DEMO_USER, "Does not match the signer drfo"),
        (
            signer(DEMO_DOCTOR_TAX_ID),
            {**DOCTOR, "legal_entity_id": OTHER},
            DEMO_USER,
            "Performer does not belong to current legal entity",
        ),
        (signer(DEMO_DOCTOR_TAX_ID), DOCTOR, "someone", "Employee is not performer of encounter"),
    ],
)
def test_the_signer_is_the_performer(who, performer, user, conflict) -> None:
    assert signer_conflict(who, performer, DEMO_CLIENT, user) == conflict


def test_one_of_rules() -> None:
    content = package_content(example("encounter_package"))
    assert check_one_of(content, PACKAGE_ONE_OF) == []
    observation = content["observations"][0]
    observation["value_string"] = "38.4"
    del observation["performer"]
    content["conditions"][0]["report_origin"] = {"coding": []}
    entries = {e["entry"]: e["rules"][0] for e in check_one_of(content, PACKAGE_ONE_OF)}
    assert entries["$.observations[0]"]["description"] == AT_LEAST_ONE
    assert entries["$.observations[0]"]["params"] == [
        "$.observations[0].report_origin",
        "$.observations[0].performer",
    ]
    assert entries["$.observations[0].value_quantity"]["description"] == ONLY_ONE
    assert entries["$.observations[0].value_string"]["rule"] == "oneOf"
    assert entries["$.conditions[0].asserter"]["description"] == ONLY_ONE
    assert entries["$.conditions[0].report_origin"]["description"] == ONLY_ONE

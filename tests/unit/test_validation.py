"""Pure logic of validation: the package schemas, their named rules, the 422 builder, and the
processor registry."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import orjson
import pytest
from marshmallow import ValidationError

from consumers.processors import builtin_registry
from schemas.encounter_package import EncounterPackageSchema
from schemas.validation import invalid_entries, json_path
from service.domain.entities import ENCOUNTER_ENTITY_KINDS
from service.domain.jobs import MAX_ERROR_BYTES, JobOutcome
from service.usecases.job_types import JobType, JobTypeRegistry
from service.usecases.submissions import parse_body
from tests.harness import example

PACKAGE = EncounterPackageSchema()


def errors_of(data: dict) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        PACKAGE.load(data)
    entries = invalid_entries(caught.value.messages, ["data"])
    return {entry["entry"]: [rule["rule"] for rule in entry["rules"]] for entry in entries}


def valid_data() -> dict:
    return copy.deepcopy(example("encounter_package", new_ids=False)["data"])


def test_the_example_package_is_valid_and_loads_typed_values() -> None:
    loaded = PACKAGE.load(valid_data())
    assert loaded["encounter"]["date"] == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    assert loaded["immunizations"][0]["expiration_date"] == "2027-06-30"
    assert loaded["encounter"]["class_"] == {"system": "eHealth/encounter_classes", "code": "AMB"}


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("$", []),
        (
            "$.data.conditions[0].code.coding[0].code",
            ["data", "conditions", 0, "code", "coding", 0, "code"],
        ),
        ("$.data['a.b']", ["data", "a.b"]),
        ("$['it\\'s']", ["it's"]),
        ("$['$ne']", ["$ne"]),
        ("$['9lives']", ["9lives"]),
    ],
)
def test_json_paths(path, parts) -> None:
    assert json_path(parts) == path


def test_every_entity_kind_reports_its_required_fields_at_once() -> None:
    data = {"encounter": {}} | {kind.package_key: [{}] for kind in ENCOUNTER_ENTITY_KINDS}
    errors = errors_of(data)
    assert errors["$.data.encounter.id"] == ["required"]
    assert errors["$.data.encounter.class"] == ["required"]
    for kind in ENCOUNTER_ENTITY_KINDS:
        assert errors[f"$.data.{kind.package_key}[0].id"] == ["required"], kind.entity
        assert errors[f"$.data.{kind.package_key}[0].encounter_id"] == ["required"], kind.entity


@pytest.mark.parametrize(
    ("change", "entry", "rule"),
    [
        (
            lambda d: d["observations"][0]["value_quantity"].update(value="38.2"),
            "observations[0].value_quantity.value",
            "type",
        ),
        (
            lambda d: d["observations"][0]["value_quantity"].update(value=True),
            "observations[0].value_quantity.value",
            "type",
        ),
        (
            lambda d: d["observations"][0]["value_quantity"].update(value=10**400),
            "observations[0].value_quantity.value",
            "number",
        ),
        (
            lambda d: d["observations"][0]["value_quantity"].update(value=1e13),
            "observations[0].value_quantity.value",
            "number",
        ),
        (
            lambda d: d["conditions"][0].update(primary_source="true"),
            "conditions[0].primary_source",
            "type",
        ),
        (
            lambda d: d["conditions"][0].update(primary_source=1),
            "conditions[0].primary_source",
            "type",
        ),
        (
            lambda d: d["encounter"]["diagnoses"][0].update(rank="1"),
            "encounter.diagnoses[0].rank",
            "type",
        ),
        (
            lambda d: d["encounter"]["diagnoses"][0].update(rank=1.5),
            "encounter.diagnoses[0].rank",
            "type",
        ),
        (lambda d: d["encounter"].update(status=7), "encounter.status", "type"),
        (lambda d: d["encounter"].update(status="open"), "encounter.status", "inclusion"),
        (
            lambda d: d["encounter"].update(id="{90a9e15b-b71b-4caf-8f2e-ff247e8a5600}"),
            "encounter.id",
            "uuid",
        ),
        (lambda d: d["encounter"].update(date="2026-13-45T00:00:00Z"), "encounter.date", "format"),
        (lambda d: d["encounter"].update(date=1700000000), "encounter.date", "format"),
        (
            lambda d: d["encounter"]["period"].update(end="2026-11-19T00:00:00Z"),
            "encounter.period.end",
            "period",
        ),
        (
            lambda d: d["immunizations"][0].update(expiration_date="30.06.2027"),
            "immunizations[0].expiration_date",
            "format",
        ),
        (lambda d: d["encounter"].update(reasons={"coding": []}), "encounter.reasons", "type"),
        (lambda d: d["encounter"]["type"].update(coding=[]), "encounter.type.coding", "length"),
        (lambda d: d["procedures"][0].update(note="x" * 2001), "procedures[0].note", "length"),
        (lambda d: d["procedures"][0].update(note=""), "procedures[0].note", "length"),
        (lambda d: d.update(observations=[d["observations"][0]] * 501), "observations", "length"),
        (lambda d: d["encounter"].update(status=None), "encounter.status", "required"),
        (
            lambda d: d["encounter"]["diagnoses"][0].update(
                condition_id="00000000-0000-4000-8000-000000000000"
            ),
            "encounter.diagnoses[0].condition_id",
            "reference",
        ),
        (
            lambda d: d["observations"][0].update(
                diagnostic_report_id="00000000-0000-4000-8000-000000000000"
            ),
            "observations[0].diagnostic_report_id",
            "reference",
        ),
        (lambda d: d["devices"][0].update(id=d["conditions"][0]["id"]), "devices[0].id", "unique"),
        (lambda d: d["observations"][0].update(value_string="38.2"), "observations[0]", "one_of"),
        (lambda d: d.update(extra={"$where": "1"}), "extra", "unknown"),
    ],
)
def test_each_check_is_named_at_its_path(change, entry, rule) -> None:
    data = valid_data()
    change(data)
    errors = errors_of(data)
    assert rule in errors[f"$.data.{entry}" if entry else "$.data"], errors


def test_uuids_are_kept_lowercase_and_references_match_regardless_of_case() -> None:
    data = valid_data()
    data["encounter"]["id"] = data["encounter"]["id"].upper()
    loaded = PACKAGE.load(data)
    assert loaded["encounter"]["id"] == valid_data()["encounter"]["id"]


def test_a_date_time_without_offset_is_utc() -> None:
    data = valid_data()
    data["encounter"]["date"] = "2026-11-20T09:00:00"
    assert PACKAGE.load(data)["encounter"]["date"] == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "entry", "rule"),
    [
        (b"", "$", "json"),
        (b"\xff", "$", "json"),
        (b'{"type": "\\ud800"}', "$", "json"),  # a lone surrogate: no string MongoDB can store
        (b"[]", "$", "type"),
        (b"null", "$", "type"),
        (b"{}", "$.type", "required"),
        (
            b'{"type": "x", "patient_id": "p", "requested_by": {}, "data": {}}',
            "$.patient_id",
            "uuid",
        ),
        (b"[" * 2000 + b"]" * 2000, "$", "json"),
    ],
)
def test_bodies_that_are_no_submission(body, entry, rule) -> None:
    parsed = parse_body(body)
    first = parsed.invalid[0]
    assert (first["entry"], first["rules"][0]["rule"]) == (entry, rule)


def test_a_huge_validation_error_is_capped_under_10000_bytes() -> None:
    data = {
        "encounter": valid_data()["encounter"],
        "observations": [{"bad": i} for i in range(500)],
    }
    with pytest.raises(ValidationError) as caught:
        PACKAGE.load(data)
    invalid = invalid_entries(caught.value.messages, ["data"])
    assert len(invalid) > 500
    outcome = JobOutcome.validation_failed(invalid)
    assert len(orjson.dumps(outcome.error)) <= MAX_ERROR_BYTES
    assert outcome.error["invalid_total"] == len(invalid)


def test_every_stored_error_is_capped() -> None:
    for outcome in (
        JobOutcome.failed(409, "request_conflict", "x" * 50_000),
        JobOutcome.failed_with_error("y" * 50_000),
    ):
        assert len(orjson.dumps(outcome.error)) <= MAX_ERROR_BYTES


def test_the_registry_finds_every_processor_module() -> None:
    registry = builtin_registry()
    assert registry.names == ["encounter_package.cancel", "encounter_package.create"]
    assert registry.get("encounter_package.create").required_scope == "encounter:write"
    assert registry.get("nothing") is None


def test_a_job_type_is_registered_once() -> None:
    job_type = builtin_registry().get("encounter_package.create")
    with pytest.raises(ValueError, match="registered twice"):
        JobTypeRegistry([job_type, job_type])
    extra = JobType("episode.create", job_type.schema, job_type.handler, "episode:write")
    assert builtin_registry().with_types(extra).get("episode.create") is extra


def test_a_key_given_twice_is_a_422_at_its_path_and_the_requester_is_still_known() -> None:
    body = (
        b'{"type": "encounter_package.create",'
        b' "patient_id": "5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f",'
        b' "requested_by": {"client_id": "mis-1", "user_id": "u", "scope": "encounter:write"},'
        b' "data": {"encounter": {"id": "a", "status": "finished", "status": "entered_in_error"},'
        b' "conditions": [{"id": 1}, {"code": 1, "code": 2, "x": {"a.b": 1, "a.b": 2}}]}}'
    )
    parsed = parse_body(body)
    assert parsed.raw["requested_by"]["client_id"] == "mis-1"
    assert [entry["entry"] for entry in parsed.invalid] == [
        "$.data.encounter.status",
        "$.data.conditions[1].code",
        "$.data.conditions[1].x['a.b']",
    ]
    assert {entry["rules"][0]["rule"] for entry in parsed.invalid} == {"unique"}

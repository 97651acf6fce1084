"""Pure logic of validation: the package content's schema and its rules in eHealth's
vocabulary, the 422 builder, and the processor registry."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import orjson
import pytest
from marshmallow import ValidationError

from consumers.processors import builtin_registry
from schemas.encounter_package import PackageCreateRequestSchema
from schemas.package_content import PACKAGE_CREATE_CONTENT
from schemas.rules import DATE_TIME_REGEX, UUID_PATTERN
from schemas.validation import invalid_entries, json_path
from service.domain.entities import ENCOUNTER_ENTITY_KINDS
from service.domain.jobs import MAX_ERROR_BYTES, JobOutcome
from service.usecases.job_types import JobType, JobTypeRegistry
from service.usecases.submissions import parse_body
from tests.harness import example, package_content

PACKAGE = PACKAGE_CREATE_CONTENT


def entries_of(content: dict, schema=PACKAGE) -> list[dict]:
    with pytest.raises(ValidationError) as caught:
        schema.load(content)
    return invalid_entries(caught.value.messages)


def errors_of(content: dict) -> dict[str, list[str]]:
    return {
        entry["entry"]: [rule["rule"] for rule in entry["rules"]] for entry in entries_of(content)
    }


def valid_content() -> dict:
    return copy.deepcopy(package_content(example("encounter_package", new_ids=False)))


def test_the_example_package_is_valid_and_loads_typed_values() -> None:
    loaded = PACKAGE.load(valid_content())
    assert isinstance(loaded["encounter"]["date"], datetime)
    assert loaded["encounter"]["date"].tzinfo is not None
    assert loaded["encounter"]["class"] == {"system": "eHealth/encounter_classes", "code": "AMB"}


@pytest.mark.parametrize(
    ("path", "parts", "schema_style"),
    [
        ("$", [], False),
        (
            "$.conditions[0].code.coding[0].code",
            ["conditions", 0, "code", "coding", 0, "code"],
            False,
        ),
        (
            "$.conditions.[0].code.coding.[0].code",
            ["conditions", 0, "code", "coding", 0, "code"],
            True,
        ),
        ("$.data['a.b']", ["data", "a.b"], False),
        ("$['it\\'s']", ["it's"], False),
        ("$['$ne']", ["$ne"], True),
        ("$['9lives']", ["9lives"], False),
    ],
)
def test_json_paths(path, parts, schema_style) -> None:
    assert json_path(parts, schema_style=schema_style) == path


def test_every_entity_kind_reports_its_required_fields_at_once() -> None:
    content = {"encounter": {}} | {kind.package_key: [{}] for kind in ENCOUNTER_ENTITY_KINDS}
    entries = {entry["entry"]: entry["rules"] for entry in entries_of(content)}
    assert entries["$.encounter.id"] == [
        {"rule": "required", "params": [], "description": "required property id was not present"}
    ]
    assert entries["$.encounter.class"][0]["description"] == (
        "required property class was not present"
    )
    for kind in ENCOUNTER_ENTITY_KINDS:
        assert entries[f"$.{kind.package_key}.[0].id"][0]["rule"] == "required", kind.entity


def _set(path: list, value) -> callable:
    def change(content: dict) -> None:
        node = content
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return change


def _drop(path: list) -> callable:
    def change(content: dict) -> None:
        node = content
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return change


QUANTITY = ["observations", 0, "value_quantity", "value"]


@pytest.mark.parametrize(
    ("change", "entry", "rule", "params", "description"),
    [
        (
            _set(QUANTITY, "38.2"),
            "$.observations.[0].value_quantity.value",
            "cast",
            ["number"],
            "type mismatch. Expected Number but got String",
        ),
        (
            _set(QUANTITY, True),
            "$.observations.[0].value_quantity.value",
            "cast",
            ["number"],
            "type mismatch. Expected Number but got Boolean",
        ),
        (
            _set(["conditions", 0, "primary_source"], 1),
            "$.conditions.[0].primary_source",
            "cast",
            ["boolean"],
            "type mismatch. Expected Boolean but got Integer",
        ),
        (
            _set(["encounter", "status"], None),
            "$.encounter.status",
            "cast",
            ["string"],
            "type mismatch. Expected String but got Null",
        ),
        (
            _set(["encounter", "reasons"], {"coding": []}),
            "$.encounter.reasons",
            "cast",
            ["array"],
            "type mismatch. Expected Array but got Object",
        ),
        (
            _set(["encounter", "status"], "open"),
            "$.encounter.status",
            "inclusion",
            ["finished"],
            "value is not allowed in enum",
        ),
        (
            _set(["encounter", "id"], "90A9E15B-B71B-4CAF-8F2E-FF247E8A5600"),
            "$.encounter.id",
            "format",
            [UUID_PATTERN],
            f'string does not match pattern "{UUID_PATTERN}"',
        ),
        (
            _set(["encounter", "date"], "2026-12-01 09:00"),
            "$.encounter.date",
            "datetime",
            [f"~r/{DATE_TIME_REGEX}/"],
            'expected "2026-12-01 09:00" to be a valid ISO 8601 date-time',
        ),
        (
            _set(["encounter", "date"], "2026-02-30T09:00:00Z"),
            "$.encounter.date",
            "datetime",
            [],
            'expected "2026-02-30T09:00:00Z" to be an existing date-time',
        ),
        (
            _set(["encounter", "type", "coding"], []),
            "$.encounter.type.coding",
            "length",
            {"min": 1},
            "expected a minimum of 1 items but got 0",
        ),
        (
            _set(["encounter", "diagnoses", 0, "rank"], 11),
            "$.encounter.diagnoses.[0].rank",
            "number",
            {"less_than_or_equal_to": 10},
            "expected the value to be <= 10",
        ),
        (
            _set(["devices", 0, "model"], "x" * 201),
            "$.devices.[0].model",
            "length",
            {"max": 200},
            "expected value to have a maximum length of 200 but was 201",
        ),
        (
            _set(["allergy_intolerances", 0, "type"], ""),
            "$.allergy_intolerances.[0].type",
            "length",
            {"min": 1},
            "expected value to have a minimum length of 1 but was 0",
        ),
        (
            _drop(["encounter", "performer"]),
            "$.encounter.performer",
            "required",
            [],
            "required property performer was not present",
        ),
        (
            _set(["encounter", "priority"], "urgent"),
            "$.encounter.priority",
            "schema",
            {"priority": "urgent"},
            "schema does not allow additional properties",
        ),
        (
            _set(["encounter", "class", "system"], "eHealth/other"),
            "$.encounter.class.system",
            "inclusion",
            ["eHealth/encounter_classes"],
            "value is not allowed in enum",
        ),
    ],
)
def test_each_check_is_named_at_its_path(change, entry, rule, params, description) -> None:
    content = valid_content()
    change(content)
    found = {e["entry"]: e["rules"] for e in entries_of(content)}
    assert {"rule": rule, "params": params, "description": description} in found[entry], found


def test_fifty_entities_of_a_kind_at_most() -> None:
    content = valid_content()
    content["observations"] = content["observations"] * 51
    assert errors_of(content)["$.observations"] == ["length"]


def test_a_date_time_without_offset_is_utc() -> None:
    content = valid_content()
    content["encounter"]["date"] = "2026-11-20T09:00:00"
    assert PACKAGE.load(content)["encounter"]["date"] == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_the_request_envelope_takes_signed_data_and_visit_only() -> None:
    request = PackageCreateRequestSchema()
    data = example("encounter_package")["data"]
    assert set(request.load(data)) == {"visit", "signed_data"}
    found = {e["entry"]: e["rules"][0]["rule"] for e in entries_of({"encounter": {}}, request)}
    assert found == {"$.signed_data": "required", "$.encounter": "schema"}
    found = {
        e["entry"]: e["rules"][0]["rule"]
        for e in entries_of({"signed_data": "", "visit": {"id": "x"}}, request)
    }
    assert found == {
        "$.signed_data": "length",
        "$.visit.id": "format",
        "$.visit.period": "required",
    }


@pytest.mark.parametrize(
    ("body", "entry", "rule"),
    [
        (b"", "$", "json"),
        (b"\xff", "$", "json"),
        (b'{"type": "\\ud800"}', "$", "json"),  # a lone surrogate: no string MongoDB can store
        (b"[]", "$", "cast"),
        (b"null", "$", "cast"),
        (b"{}", "$.type", "required"),
        (
            b'{"type": "x", "patient_id": "p", "requested_by": {}, "data": {}}',
            "$.patient_id",
            "format",
        ),
        (b"[" * 2000 + b"]" * 2000, "$", "json"),
    ],
)
def test_bodies_that_are_no_submission(body, entry, rule) -> None:
    parsed = parse_body(body)
    first = parsed.invalid[0]
    assert (first["entry"], first["rules"][0]["rule"]) == (entry, rule)


def test_a_huge_validation_error_is_capped_under_10000_bytes() -> None:
    content = {
        "encounter": valid_content()["encounter"],
        "observations": [{"bad": i} for i in range(50)],
    }
    invalid = entries_of(content)
    assert len(invalid) > 300
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
    assert registry.names == [
        "diagnostic_report_package.cancel",
        "diagnostic_report_package.create",
        "encounter_package.cancel",
        "encounter_package.create",
        "episode.cancel",
        "episode.close",
        "episode.create",
        "episode.update",
        "service_request.create",
    ]
    assert registry.get("encounter_package.create").required_scope == "encounter:write"
    assert registry.get("nothing") is None


def test_a_job_type_is_registered_once() -> None:
    job_type = builtin_registry().get("encounter_package.create")
    with pytest.raises(ValueError, match="registered twice"):
        JobTypeRegistry([job_type, job_type])
    extra = JobType("approval.create", job_type.schema, job_type.handler, "approval:write")
    assert builtin_registry().with_types(extra).get("approval.create") is extra


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


@pytest.mark.parametrize("sent", ["2020-01-15", "20200115", "2020-W03-3"])
def test_a_date_is_kept_in_one_form_whatever_iso_form_was_sent(sent) -> None:
    from schemas.rules import Date, StrictSchema

    class Day(StrictSchema):
        day = Date()

    assert Day().load({"day": sent}) == {"day": "2020-01-15"}

"""Hypothesis on the schema of a create package's signed content (`schemas.package_content`).

Valid packages are drawn from a specification written here from the original's JSON schema
(a subset of its properties: every required one, some optional ones, and our two kinds). Each
mutation breaks one thing the schema checks and knows what it broke, so the test asserts that
the load reports exactly that: one entry, at the JSONPath of what was broken, with the rule of
the original's validator. Business rules (exactly one of..., references to what is not in the
package) are not the schema's, and are not tried here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from schemas.package_content import PACKAGE_CREATE_CONTENT
from schemas.rules import use_dictionaries
from schemas.validation import invalid_entries

# --- A specification of the package, from the original's JSON schema ---------------------------


@dataclass(frozen=True)
class Spec:
    type: str  # a JSON type: string, number, boolean, object, array
    enum: tuple[str, ...] | None = None
    format: str | None = None  # uuid, date-time, time
    min_length: int | None = None
    max_length: int | None = None
    maximum: float | None = None
    fields: tuple[tuple[str, Spec, bool], ...] = ()  # name, spec, required
    items: Spec | None = None
    min_items: int | None = None
    max_items: int | None = None
    # How many items a valid package holds where the schema does not say (generation only).
    sizes: tuple[int, int] | None = None


def string(*enum: str, **kw: Any) -> Spec:
    return Spec("string", enum=enum or None, **kw)


UUID = string(format="uuid")
DATE_TIME = string(format="date-time")
NUMBER = Spec("number")
BOOLEAN = Spec("boolean")


def obj(required: dict[str, Spec], optional: dict[str, Spec] | None = None) -> Spec:
    fields = [(name, spec, True) for name, spec in required.items()]
    fields += [(name, spec, False) for name, spec in (optional or {}).items()]
    return Spec("object", fields=tuple(fields))


def array(
    items: Spec,
    min_items: int | None = None,
    max_items: int | None = None,
    sizes: tuple[int, int] | None = None,
) -> Spec:
    return Spec("array", items=items, min_items=min_items, max_items=max_items, sizes=sizes)


def concept(
    *systems: str,
    codes: tuple[str, ...] = (),
    coding_required: bool = True,
    coding_min: int | None = 1,
    coding_max: int | None = None,
    text_max: int | None = None,
    item_required: tuple[str, ...] = ("system", "code"),
) -> Spec:
    item = {"system": string(*systems), "code": string(*codes)}
    coding = array(
        obj(
            {k: v for k, v in item.items() if k in item_required},
            {k: v for k, v in item.items() if k not in item_required},
        ),
        coding_min,
        coding_max,
    )
    text = string(max_length=text_max)
    if coding_required:
        return obj({"coding": coding}, {"text": text})
    return obj({}, {"coding": coding, "text": text})


def reference(
    *resources: str, type_required: bool = False, uuid_value: bool = False, **kw: Any
) -> Spec:
    identifier_type = concept("eHealth/resources", codes=resources, **kw)
    value = UUID if uuid_value else string()
    if type_required:
        identifier = obj({"type": identifier_type, "value": value})
    else:
        identifier = obj({"value": value}, {"type": identifier_type})
    return obj({"identifier": identifier})


QUANTITY = obj(
    {"value": NUMBER, "unit": string()},
    {
        "comparator": string(">", ">=", "=", "<=", "<"),
        "system": string("eHealth/ucum/units"),
        "code": string(),
    },
)
ENCOUNTER_REFERENCE = reference("encounter")
EMPLOYEE = reference("employee")

ENCOUNTER = obj(
    {
        "id": UUID,
        "status": string("finished"),
        "episode": reference("episode"),
        "visit": reference("visit"),
        "class": obj({"system": string("eHealth/encounter_classes"), "code": string()}),
        "type": concept("eHealth/encounter_types"),
        "performer": EMPLOYEE,
        "reasons": array(concept("eHealth/ICPC2/reasons"), 1),
        "diagnoses": array(
            obj(
                {
                    "condition": reference("condition", coding_max=1),
                    "role": concept("eHealth/diagnosis_roles"),
                },
                {"rank": Spec("number", maximum=10)},
            ),
            1,
        ),
        "actions": array(concept("eHealth/ICPC2/actions"), 1),
        "date": DATE_TIME,
    },
    {
        "division": reference("division"),
        "prescriptions": string(),
        "supporting_info": array(reference("observation", "diagnostic_report")),
    },
)
CONDITION = obj(
    {
        "id": UUID,
        "context": ENCOUNTER_REFERENCE,
        "code": concept("eHealth/ICPC2/condition_codes", "eHealth/ICD10/condition_codes"),
        "clinical_status": string(),
        "verification_status": string(),
        "onset_date": DATE_TIME,
    },
    {
        "primary_source": BOOLEAN,
        "asserted_date": DATE_TIME,
        "severity": concept("eHealth/condition_severities"),
        "body_sites": array(concept("eHealth/body_sites"), 1),
    },
)
OBSERVATION = obj(
    {
        "id": UUID,
        "status": string(),
        "context": ENCOUNTER_REFERENCE,
        "categories": array(concept("eHealth/observation_categories"), 1, 1),
        "code": concept("eHealth/LOINC/observation_codes"),
        "issued": DATE_TIME,
        "primary_source": BOOLEAN,
    },
    {
        "value_quantity": QUANTITY,
        "value_time": string(format="time"),
        "effective_period": obj({"start": DATE_TIME, "end": DATE_TIME}),
        "comment": string(),
    },
)
ALLERGY_INTOLERANCE = obj(
    {
        "id": UUID,
        "clinical_status": string(min_length=1),
        "verification_status": string(min_length=1),
        "type": string(min_length=1),
        "category": string(min_length=1),
        "criticality": string(min_length=1),
        "context": reference("encounter", coding_max=1),
        "code": concept("eHealth/allergy_intolerance_codes", coding_max=1),
        "onset_date_time": DATE_TIME,
        "asserted_date": DATE_TIME,
        "primary_source": BOOLEAN,
    },
    {"last_occurrence": DATE_TIME},
)
IMMUNIZATION = obj(
    {
        "id": UUID,
        "status": string(),
        "not_given": BOOLEAN,
        "vaccine_code": concept("eHealth/vaccine_codes"),
        "context": ENCOUNTER_REFERENCE,
        "date": DATE_TIME,
        "primary_source": BOOLEAN,
    },
    {
        "manufacturer": string(min_length=1),
        "dose_quantity": QUANTITY,
        "vaccination_protocols": array(
            obj(
                {},
                {
                    "dose_sequence": NUMBER,
                    "target_diseases": array(
                        concept("eHealth/vaccination_target_diseases", coding_max=1), 1
                    ),
                },
            ),
            1,
        ),
    },
)
RISK_CONCEPT = {"coding_required": False, "coding_min": None, "item_required": ("code",)}
RISK_ASSESSMENT = obj(
    {
        "id": UUID,
        "status": string(),
        "code": concept("eHealth/risk_assessment_codes", **RISK_CONCEPT),
        "context": reference("encounter", type_required=True, **RISK_CONCEPT),
        "asserted_date": DATE_TIME,
    },
    {
        "primary_source": BOOLEAN,
        "predictions": array(
            obj(
                {},
                {
                    "outcome": concept("eHealth/risk_assessment_outcomes", **RISK_CONCEPT),
                    "probability_decimal": NUMBER,
                },
            )
        ),
    },
)
DEVICE = obj(
    {
        "id": UUID,
        "status": string(),
        "asserted_date": DATE_TIME,
        "usage_period": obj({"start": DATE_TIME}, {"end": DATE_TIME}),
        "context": reference(
            "encounter",
            type_required=True,
            coding_required=False,
            coding_min=None,
            coding_max=1,
            text_max=2000,
        ),
        "primary_source": BOOLEAN,
        "type": concept(
            "eHealth/device_types",
            coding_required=False,
            coding_min=None,
            coding_max=1,
            text_max=2000,
        ),
    },
    {
        "lot_number": string(max_length=200),
        "model": string(max_length=200),
        "note": string(max_length=2000),
    },
)
STATEMENT_REFERENCE = {
    "type_required": True,
    "uuid_value": True,
    "coding_required": False,
    "coding_min": None,
    "text_max": 2000,
}
MEDICATION_STATEMENT = obj(
    {
        "id": UUID,
        "asserted_date": DATE_TIME,
        "status": string(),
        "context": reference("encounter", **STATEMENT_REFERENCE),
        "primary_source": BOOLEAN,
        "medication_code": obj(
            {},
            {
                "coding": array(obj({"system": string(), "code": string()})),
                "text": string(max_length=2000),
            },
        ),
    },
    {"note": string(max_length=2000), "dosage": string(max_length=2000)},
)
MEDICATION_ADMINISTRATION = obj(
    {
        "id": UUID,
        "status": string("completed"),
        "context": ENCOUNTER_REFERENCE,
        "primary_source": BOOLEAN,
        "medication": concept("eHealth/medications"),
        "effective_date_time": DATE_TIME,
    },
    {
        "performer": EMPLOYEE,
        "dosage": obj(
            {},
            {
                "text": string(),
                "dose": QUANTITY,
                "route": concept("eHealth/vaccination_routes"),
            },
        ),
        "note": string(),
    },
)
DIAGNOSTIC_REPORT = obj(
    {
        "id": UUID,
        "status": string("final"),
        "code": reference("service_group", "service"),
        "issued": string(),  # format "dateTime", unknown to the validator: not checked
        "recorded_by": reference("employee", type_required=True, coding_min=None),
        "encounter": reference(
            "encounter", type_required=True, coding_required=False, coding_min=None
        ),
        "primary_source": BOOLEAN,
    },
    {
        "conclusion": string(max_length=2000),
        "category": array(
            concept(
                "eHealth/diagnostic_report_categories",
                coding_required=False,
                coding_min=None,
                text_max=2000,
            ),
            # Not bounded; the original checks the first item only (tuple validation), and
            # so a valid package here has exactly one, which every mutation may break.
            sizes=(1, 1),
        ),
    },
)
PROCEDURE = obj(
    {
        "id": UUID,
        "status": string("completed", "not_done"),
        "context": ENCOUNTER_REFERENCE,
        "primary_source": BOOLEAN,
        "code": concept("eHealth/procedure_codes"),
        "performed_date_time": DATE_TIME,
    },
    {
        "category": concept("eHealth/procedure_categories"),
        "outcome": concept("eHealth/procedure_outcomes"),
        "note": string(),
    },
)
ENTITIES = {
    "conditions": CONDITION,
    "observations": OBSERVATION,
    "allergy_intolerances": ALLERGY_INTOLERANCE,
    "immunizations": IMMUNIZATION,
    "risk_assessments": RISK_ASSESSMENT,
    "devices": DEVICE,
    "medication_statements": MEDICATION_STATEMENT,
    "medication_administrations": MEDICATION_ADMINISTRATION,
    "diagnostic_reports": DIAGNOSTIC_REPORT,
    "procedures": PROCEDURE,
}
PACKAGE = obj(
    {"encounter": ENCOUNTER},
    {key: array(spec, max_items=50) for key, spec in ENTITIES.items()},
)

# --- Valid values ------------------------------------------------------------------------------

UUIDS = st.uuids(version=4).map(str)
OFFSETS = st.sampled_from(["Z", "+00:00", "+02:00", "-05:30", ""])
DATE_TIMES = st.builds(
    lambda moment, fraction, offset: moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset,
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
    st.sampled_from(["", ".5", ".123456"]),
    OFFSETS,
)
TIMES = st.builds(
    lambda h, m, s: f"{h:02}:{m:02}:{s:02}",
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
)
TEXT = st.text(max_size=12)


def valid(spec: Spec, depth: int = 0) -> st.SearchStrategy[Any]:
    if spec.type == "string":
        if spec.enum:
            return st.sampled_from(spec.enum)
        if spec.format == "uuid":
            return UUIDS
        if spec.format == "date-time":
            return DATE_TIMES
        if spec.format == "time":
            return TIMES
        return st.text(min_size=spec.min_length or 0, max_size=min(spec.max_length or 12, 12))
    if spec.type == "number":
        top = spec.maximum if spec.maximum is not None else 1e6
        return st.integers(-1000, int(top)) | st.floats(-1e6, top, allow_nan=False)
    if spec.type == "boolean":
        return st.booleans()
    if spec.type == "array":
        assert spec.items is not None
        low = spec.min_items or 0
        high = min(spec.max_items if spec.max_items is not None else 2, 2 if depth else 3)
        if spec.sizes:
            low, high = spec.sizes
        return st.lists(valid(spec.items, depth + 1), min_size=low, max_size=max(low, high))
    required = {name: valid(field, depth + 1) for name, field, req in spec.fields if req}
    optional = {name: valid(field, depth + 1) for name, field, req in spec.fields if not req}
    return st.fixed_dictionaries(required, optional=optional)


PACKAGES = valid(PACKAGE)

# --- Mutations ---------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def entry_path(path: Path) -> str:
    """The original's schema-error path: `$.encounter.diagnoses.[0].role`."""
    return "$" + "".join(f".[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def nodes(value: Any, spec: Spec, path: Path = ()) -> Iterator[tuple[Path, Spec, Any]]:
    """Each value of the package with its path and its specification."""
    yield path, spec, value
    if spec.type == "object":
        for name, field, _ in spec.fields:
            if name in value:
                yield from nodes(value[name], field, (*path, name))
    elif spec.type == "array":
        assert spec.items is not None
        for index, item in enumerate(value):
            yield from nodes(item, spec.items, (*path, index))


def replaced(package: dict[str, Any], path: Path, new: Any) -> dict[str, Any]:
    """A copy of the package with the value at `path` replaced (or removed: `REMOVE`)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(package, list):
        copy: Any = list(package)
    else:
        copy = dict(package)
    if rest:
        copy[head] = replaced(package[head], rest, new)
    elif new is REMOVE:
        del copy[head]
    else:
        copy[head] = new
    return copy


REMOVE = object()
OTHER_TYPES = {
    "string": [7, 1.5, True, None, [], {}],
    "number": ["7", True, None, [], {}],
    "boolean": ["true", 1, None, [], {}],
    "object": ["x", 7, False, None, []],
    "array": ["x", 7, False, None, {}],
}


@dataclass(frozen=True)
class Broken:
    package: dict[str, Any]
    entry: str
    rule: str


def required_removed(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = [
        (*path, name)
        for path, spec, value in nodes(package, PACKAGE)
        if spec.type == "object"
        for name, _, required in spec.fields
        if required and name in value
    ]
    path = draw(st.sampled_from(found))
    return Broken(replaced(package, path, REMOVE), entry_path(path), "required")


def wrong_type(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = [(path, spec) for path, spec, _ in nodes(package, PACKAGE) if path]
    path, spec = draw(st.sampled_from(found))
    new = draw(st.sampled_from(OTHER_TYPES[spec.type]))
    return Broken(replaced(package, path, new), entry_path(path), "cast")


def extra_property(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = [
        (path, value) for path, spec, value in nodes(package, PACKAGE) if spec.type == "object"
    ]
    path, value = draw(st.sampled_from(found))
    name = draw(
        st.sampled_from(["unexpected", "encounter_id", "extra_1"]).filter(lambda n: n not in value)
    )
    new = {**value, name: draw(st.sampled_from(["x", 1, None, {}]))}
    return Broken(replaced(package, path, new), entry_path((*path, name)), "schema")


def outside_enum(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = [(path, spec) for path, spec, _ in nodes(package, PACKAGE) if spec.enum]
    path, spec = draw(st.sampled_from(found))
    new = draw(st.text(max_size=20).filter(lambda text: text not in spec.enum))
    return Broken(replaced(package, path, new), entry_path(path), "inclusion")


BAD_UUIDS = st.sampled_from(
    [
        "",
        "not-a-uuid",
        "3FA85F64-5717-4562-B3FC-2C963F66AFA6",  # upper case
        "3fa85f64-5717-0562-b3fc-2c963f66afa6",  # version 0
        "3fa85f64-5717-4562-c3fc-2c963f66afa6",  # variant c
        "3fa85f6457174562b3fc2c963f66afa6",
    ]
)
BAD_TIMES = st.sampled_from(["24:00:00", "12:60:00", "1:02:03", "12:00", "noon"])
BAD_DATE_TIMES = st.sampled_from(
    ["", "2024-01-15", "2024-13-01T10:00:00Z", "2024-01-15T25:00:00Z", "yesterday"]
)


def bad_format(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = [
        (path, spec)
        for path, spec, _ in nodes(package, PACKAGE)
        if spec.format in ("uuid", "time", "date-time")
    ]
    path, spec = draw(st.sampled_from(found))
    if spec.format == "date-time":
        return Broken(replaced(package, path, draw(BAD_DATE_TIMES)), entry_path(path), "datetime")
    new = draw(BAD_UUIDS if spec.format == "uuid" else BAD_TIMES)
    return Broken(replaced(package, path, new), entry_path(path), "format")


def out_of_length(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    found = []
    for path, spec, value in nodes(package, PACKAGE):
        choices: list[Any] = []
        if spec.min_length:
            choices.append("x" * (spec.min_length - 1))
        if spec.max_length:
            choices.append("y" * (spec.max_length + 1))
        if spec.min_items:
            choices.append([])
        if spec.max_items is not None and value:
            choices.append([value[0]] * (spec.max_items + 1))
        found += [(path, choice) for choice in choices]
    path, new = draw(st.sampled_from(found))
    return Broken(replaced(package, path, new), entry_path(path), "length")


def out_of_range(draw: st.DrawFn, package: dict[str, Any]) -> Broken:
    index = draw(st.integers(0, len(package["encounter"]["diagnoses"]) - 1))
    rank = draw(st.integers(11, 10**6) | st.floats(10.001, 1e9))
    path = ("encounter", "diagnoses", index, "rank")
    return Broken(replaced(package, path, rank), entry_path(path), "number")


MUTATIONS = {
    "required": required_removed,
    "cast": wrong_type,
    "schema": extra_property,
    "inclusion": outside_enum,
    "format": bad_format,
    "length": out_of_length,
    "number": out_of_range,
}
# Cases generated per kind; the suite's summary prints them (tests/conftest.py).
CASES: Counter[str] = Counter()


def entries_of(package: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        PACKAGE_CREATE_CONTENT.load(package)
    except ValidationError as exc:
        return invalid_entries(exc.messages)
    return []


SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(PACKAGES)
def test_a_valid_package_reports_nothing(package):
    CASES["valid"] += 1
    event("valid")
    assert entries_of(package) == []


@pytest.mark.parametrize("kind", list(MUTATIONS))
@SETTINGS
@given(package=PACKAGES, data=st.data())
def test_a_mutation_reports_exactly_what_it_broke(kind, package, data):
    broken = MUTATIONS[kind](data.draw, package)
    CASES[kind] += 1
    event(kind)
    note(f"{kind} at {broken.entry}")
    entries = entries_of(broken.package)
    assert [entry["entry"] for entry in entries] == [broken.entry]
    assert [rule["rule"] for rule in entries[0]["rules"]] == [broken.rule]


# --- Examples ----------------------------------------------------------------------------------


_EXAMPLE = {
    "encounter": {
        "id": "7c3da506-804d-4550-8993-bf17f9ee0402",
        "status": "finished",
        "episode": {"identifier": {"value": "0a2b6f4c-3d1e-4b5a-8c7d-9e0f1a2b3c4d"}},
        "visit": {"identifier": {"value": "2f0b3a41-9d4b-4c39-a1de-2f6e5b7a8c90"}},
        "class": {"system": "eHealth/encounter_classes", "code": "AMB"},
        "type": {"coding": [{"system": "eHealth/encounter_types", "code": "field"}]},
        "performer": {"identifier": {"value": "5c8a6d3b-6d3b-4d3b-9d3b-6d3b6d3b6d3b"}},
        "reasons": [{"coding": [{"system": "eHealth/ICPC2/reasons", "code": "A01"}]}],
        "diagnoses": [
            {
                "condition": {"identifier": {"value": "1e1c3a9a-0c16-4c7b-8f5e-0d1b4c2a5f11"}},
                "role": {"coding": [{"system": "eHealth/diagnosis_roles", "code": "primary"}]},
            }
        ],
        "actions": [{"coding": [{"system": "eHealth/ICPC2/actions", "code": "A02"}]}],
        "date": "2024-03-01T09:00:00Z",
    }
}


def test_a_code_outside_its_dictionary_is_an_inclusion_with_the_sorted_keys():
    package = replaced(_EXAMPLE, ("encounter", "class", "code"), "EMER")
    with use_dictionaries({"eHealth/encounter_classes": {"AMB"}}):
        assert entries_of(_EXAMPLE) == []
        entries = entries_of(package)
    assert entries == [
        {
            "entry_type": "json_data_property",
            "entry": "$.encounter.class.code",
            "rules": [
                {
                    "rule": "inclusion",
                    "params": ["AMB"],
                    "description": "value is not allowed in enum",
                }
            ],
        }
    ]
    with use_dictionaries({"eHealth/encounter_classes": {"PHC", "AMB", "INPATIENT"}}):
        [entry] = entries_of(package)
    assert entry["rules"][0]["params"] == ["AMB", "INPATIENT", "PHC"]
    assert entries_of(package) == []  # no dictionary given: the code is not checked


def test_only_the_first_category_of_a_diagnostic_report_is_checked():
    """The original's `items` is a list of one schema (draft 4's tuple validation)."""
    report = {
        "id": "0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
        "status": "final",
        "code": {"identifier": {"value": "service-1"}},
        "issued": "not checked as a date",
        "recorded_by": {
            "identifier": {
                "type": {"coding": [{"system": "eHealth/resources", "code": "employee"}]},
                "value": "employee-1",
            }
        },
        "encounter": {"identifier": {"type": {}, "value": "encounter-1"}},
        "primary_source": True,
        "category": [{"coding": []}, 42, {"anything": "goes"}],
    }
    assert entries_of({**_EXAMPLE, "diagnostic_reports": [report]}) == []
    report["category"][0] = 42
    [entry] = entries_of({**_EXAMPLE, "diagnostic_reports": [report]})
    assert entry["entry"] == "$.diagnostic_reports.[0].category.[0]"
    assert entry["rules"][0]["rule"] == "cast"

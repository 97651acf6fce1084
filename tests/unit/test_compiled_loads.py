"""The compiled loads of `StrictSchema` (`schemas.rules`): whatever a compiled load takes, it
loads exactly as marshmallow does (the same values, types and key order), and whatever it
does not take, marshmallow loads from the start, so that every 422 stays marshmallow's."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError

from schemas.diagnostic_report_package import (
    DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT,
    DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT,
)
from schemas.encounter_package import PackageCreateRequestSchema
from schemas.package_content import PACKAGE_CANCEL_CONTENT, PACKAGE_CREATE_CONTENT
from schemas.rules import bounded_errors, is_compiled, marshmallow_load, use_dictionaries
from schemas.service_requests import SERVICE_REQUEST_CREATE_CONTENT
from schemas.submission import SUBMISSION
from schemas.validation import invalid_entries
from service.cli.demo import DEMO_DICTIONARIES
from tests.harness import example, package_content
from tests.unit.test_fuzz_validation import JSON
from tests.unit.test_package_content_properties import MUTATIONS, PACKAGES

DICTIONARIES = {name: frozenset(codes) for name, codes in DEMO_DICTIONARIES.items()}
CONTENTS = {
    "encounter_package": PACKAGE_CREATE_CONTENT,
    "cancel_encounter_package": PACKAGE_CANCEL_CONTENT,
    "diagnostic_report_package": DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT,
    "cancel_diagnostic_report_package": DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT,
    "service_request": SERVICE_REQUEST_CREATE_CONTENT,
}
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(load: Any, schema: Schema, data: Any) -> tuple[str, Any]:
    """What a load gives: its value as written (types and key order included), or its 422."""
    try:
        return "loaded", repr(load(schema, data))
    except ValidationError as error:
        return "refused", invalid_entries(error.messages)


def compiled_load(schema: Schema, data: Any) -> Any:
    return schema.load(data)


def assert_same(schema: Schema, data: Any) -> tuple[str, Any]:
    compiled = outcome(compiled_load, schema, data)
    assert compiled == outcome(marshmallow_load, schema, data)
    return compiled


@pytest.mark.parametrize("name", list(CONTENTS))
@pytest.mark.parametrize("dictionaries", [DICTIONARIES, {}], ids=["dictionaries", "none"])
def test_each_example_loads_as_marshmallow_loads_it(name, dictionaries) -> None:
    schema = CONTENTS[name]
    assert is_compiled(schema)
    with use_dictionaries(dictionaries):
        assert assert_same(schema, package_content(example(name)))[0] == "loaded"


def test_the_envelope_and_the_submission_load_as_marshmallow_loads_them() -> None:
    submission = example("encounter_package")
    assert assert_same(SUBMISSION, submission)[0] == "loaded"
    assert assert_same(PackageCreateRequestSchema(), submission["data"])[0] == "loaded"


def test_a_valid_package_is_loaded_without_marshmallow_and_an_invalid_one_by_it(
    monkeypatch,
) -> None:
    loads: list[str] = []
    original = Schema._do_load

    def counted(self: Schema, *args: Any, **kwargs: Any) -> Any:
        loads.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Schema, "_do_load", counted)
    content = package_content(example("encounter_package"))
    with use_dictionaries(DICTIONARIES):
        PACKAGE_CREATE_CONTENT.load(content)
        assert loads == []
        content["observations"][0]["id"] = "not-a-uuid"
        with pytest.raises(ValidationError) as refused:
            PACKAGE_CREATE_CONTENT.load(content)
    assert loads[0] == "PackageCreateContentSchema"
    assert invalid_entries(refused.value.messages)[0]["entry"] == "$.observations.[0].id"


@SETTINGS
@given(PACKAGES)
def test_a_generated_valid_package_loads_as_marshmallow_loads_it(package) -> None:
    with use_dictionaries(DICTIONARIES):
        assert_same(PACKAGE_CREATE_CONTENT, package)
    assert assert_same(PACKAGE_CREATE_CONTENT, package)[0] == "loaded"


@pytest.mark.parametrize("kind", list(MUTATIONS))
@SETTINGS
@given(package=PACKAGES, data=st.data())
def test_a_broken_package_is_refused_as_marshmallow_refuses_it(kind, package, data) -> None:
    broken = MUTATIONS[kind](data.draw, package)
    assert assert_same(PACKAGE_CREATE_CONTENT, broken.package)[0] == "refused"


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=JSON)
def test_any_json_loads_or_is_refused_as_marshmallow_does(data) -> None:
    assert_same(PACKAGE_CREATE_CONTENT, data)
    assert_same(PACKAGE_CANCEL_CONTENT, data)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.lists(st.sampled_from(["encounter", "observations", 0, "code", "coding"]), max_size=5),
    value=JSON,
)
def test_the_example_with_one_part_replaced_loads_as_marshmallow_loads_it(path, value) -> None:
    data = package_content(example("encounter_package"))
    node = data
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return
    if path and isinstance(node, dict) == isinstance(path[-1], str):
        try:
            node[path[-1]] = value
        except (IndexError, TypeError):
            return
    with use_dictionaries(DICTIONARIES):
        assert_same(PACKAGE_CREATE_CONTENT, data)


def budgeted(load: Any, data: Any) -> tuple[Any, bool, int]:
    with bounded_errors(limit=2) as budget:
        result = outcome(load, PACKAGE_CREATE_CONTENT, data)
    return result, budget.skipped, budget.failed_items


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(reports=st.lists(JSON, min_size=1, max_size=4), observations=st.lists(JSON, max_size=4))
def test_the_error_budget_is_spent_as_marshmallow_spends_it(reports, observations) -> None:
    """A diagnostic report's categories after the first are left to marshmallow's own field
    (`FirstItemArray`): what the compiled load leaves to it counts no failing item twice."""
    data = package_content(example("encounter_package"))
    report = data["diagnostic_reports"][0]
    data["diagnostic_reports"] = [
        {**report, "category": [r, *report["category"]] if n % 2 else [*report["category"], r]}
        for n, r in enumerate(reports)
    ]
    data["observations"] = [*data["observations"], *observations]
    assert budgeted(compiled_load, data) == budgeted(marshmallow_load, data)

"""Hypothesis on the 422 builder: whatever JSON a producer sends as a package, validation ends
in entries at JSONPaths of what was sent, within the size cap, and never in an exception."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from schemas.package_content import PACKAGE_CREATE_CONTENT
from schemas.validation import invalid_entries
from service.domain.jobs import MAX_ERROR_BYTES, JobOutcome
from service.usecases.submissions import parse_body
from tests.harness import example, package_content

PACKAGE = PACKAGE_CREATE_CONTENT
KEYS = st.sampled_from(
    [
        "encounter",
        "conditions",
        "observations",
        "id",
        "context",
        "identifier",
        "code",
        "coding",
        "system",
        "period",
        "start",
        "status",
        "value_quantity",
        "value",
        "$ne",
        "a.b",
        "_id",
    ]
) | st.text(max_size=12)
JSON = st.recursive(
    # Integers as orjson reads them: within 64 bits (it reads larger ones as floats).
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=60,
)


def check_entries(invalid: list[dict]) -> None:
    for entry in invalid:
        assert entry["entry"].startswith("$")
        assert entry["entry_type"] == "json_data_property"
        assert entry["rules"] and all(isinstance(rule["rule"], str) for rule in entry["rules"])
    capped = JobOutcome.validation_failed(invalid)
    assert len(orjson.dumps(capped.error)) <= MAX_ERROR_BYTES


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=JSON)
def test_any_json_as_a_package_validates_or_names_its_errors(data) -> None:
    try:
        PACKAGE.load(data)
    except ValidationError as error:
        check_entries(invalid_entries(error.messages))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.lists(st.sampled_from(["encounter", "period", "conditions", 0, "code"]), max_size=4),
    value=JSON,
)
def test_a_valid_package_with_one_part_replaced(path, value) -> None:
    data = package_content(example("encounter_package"))
    node = data
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return
    if path and isinstance(node, dict) != isinstance(path[-1], str):
        return  # a JSON object's keys are strings, a list's indices integers
    if path and isinstance(node, dict | list):
        try:
            node[path[-1]] = value
        except (IndexError, TypeError):
            return
    try:
        PACKAGE.load(data)
    except ValidationError as error:
        check_entries(invalid_entries(error.messages))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=300) | JSON.map(lambda value: json.dumps(value).encode()))
def test_any_body_parses_or_names_why_not(body) -> None:
    parsed = parse_body(body)
    assert (parsed.submission is None) == (parsed.invalid is not None)
    if parsed.invalid is not None:
        check_entries(parsed.invalid)


def test_an_integer_beyond_64_bits_is_named_at_its_path() -> None:
    content = json.dumps(package_content(example("encounter_package"))).encode()
    content = content.replace(b'"rank": 1', b'"rank": ' + b"9" * 40)
    # orjson reads an integer past 64 bits as a float; the rank's maximum says so, at its path.
    with pytest.raises(ValidationError) as caught:
        PACKAGE.load(orjson.loads(content))
    entries = invalid_entries(caught.value.messages)
    assert [e["entry"] for e in entries] == ["$.encounter.diagnoses.[0].rank"]
    assert entries[0]["rules"][0]["rule"] == "number"

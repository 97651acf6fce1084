"""The bounds on what one submission may cost (issue 15): arrays refused by their bound
before their items are read, deep nesting refused, replies kept out of the service's queues."""

from __future__ import annotations

import uuid

import orjson
import pytest
from marshmallow import ValidationError

from schemas.rules import (
    MAX_ITEMS,
    MAX_UNKNOWN_REPORTED,
    List,
    Nested,
    StrictSchema,
    String,
    bounded_errors,
)
from schemas.validation import MAX_JSON_DEPTH, json_object, nested_deeper_than
from service.domain.jobs import JobOutcome, submission_hash
from service.domain.principal import Principal
from service.messaging.broker import Topology, may_reply_to
from service.usecases.submissions import parse_body, submission_body


class Item(StrictSchema):
    code = String(required=True)


class Holder(StrictSchema):
    bounded = List(Nested(Item), max_items=2)
    unbounded = List(Nested(Item))


def errors_of(value: dict) -> dict:
    with pytest.raises(ValidationError) as raised:
        Holder().load(value)
    return raised.value.messages


def test_an_array_far_over_its_bound_is_refused_by_the_bound_alone():
    errors = errors_of({"bounded": [{}] * (MAX_ITEMS + 1), "unbounded": [{}] * 100_000})
    assert [rule.to_document() for rule in errors["bounded"]] == [
        {
            "rule": "length",
            "params": {"max": 2},
            "description": f"expected a maximum of 2 items but got {MAX_ITEMS + 1}",
        }
    ]
    assert [rule.to_document()["params"] for rule in errors["unbounded"]] == [{"max": MAX_ITEMS}]


def test_an_array_a_little_over_its_bound_reports_its_items_too_as_the_original_does():
    errors = errors_of({"bounded": [{}, {}, {"code": "a"}]})
    assert set(errors["bounded"]) == {0, 1, "_schema"}


def test_the_error_budget_stops_an_array_after_so_many_failing_items():
    with bounded_errors(3) as budget:
        errors = errors_of({"unbounded": [{}] * 50})
    assert sorted(errors["unbounded"]) == [0, 1, 2]
    assert budget.spent()


def test_without_a_budget_every_item_is_checked():
    assert len(errors_of({"unbounded": [{}] * 50})["unbounded"]) == 50


def nested(levels: int) -> tuple[object, bytes]:
    text = b"[" * levels + b"]" * levels
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return {"a": value}, b'{"a":' + text + b"}"


@pytest.mark.parametrize(
    ("levels", "too_deep"), [(MAX_JSON_DEPTH - 1, False), (MAX_JSON_DEPTH, True), (900, True)]
)
def test_nesting_is_bounded(levels, too_deep):
    value, body = nested(levels)
    assert nested_deeper_than(value, MAX_JSON_DEPTH, body) is too_deep


def test_a_request_as_deep_as_the_api_allows_is_usable_once_wrapped_in_its_submission():
    """The API allows a body 100 levels deep; the submission holding it (`data`) is one level
    deeper, and the consumer must read it, or the job of an accepted request would never end."""
    value, body = nested(MAX_JSON_DEPTH - 1)
    assert json_object(body)[1] is None
    principal = Principal.from_scope_text("user-1", "client-1", "encounter:write")
    submission = submission_body("encounter_package.create", str(uuid.uuid4()), principal, value)
    parsed = parse_body(orjson.dumps(submission))
    assert parsed.raw is not None
    assert parsed.raw["data"] == value
    too_deep, body = nested(MAX_JSON_DEPTH + 1)
    wrapped = orjson.dumps(submission_body("x", str(uuid.uuid4()), principal, too_deep))
    assert parse_body(wrapped).raw is None


def test_a_body_with_few_brackets_is_not_walked():
    class Explodes(dict):
        def values(self):  # would be walked
            raise AssertionError("walked")

    assert not nested_deeper_than(Explodes(a=1), MAX_JSON_DEPTH, b'{"a": 1}')


@pytest.mark.parametrize(
    ("queue", "allowed"),
    [
        ("amq.rabbitmq.reply-to", True),
        ("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB.abc", True),
        ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", True),
        ("producer-replies", True),
        ("", False),
        (Topology().queue, False),
        (Topology().dead_queue, False),
        (Topology("test.abc.").queue, False),
        (Topology("other-instance.").events_exchange, False),
    ],
)
def test_replies_go_only_outside_the_services_queues(queue, allowed):
    assert may_reply_to(queue) is allowed


def test_an_object_of_many_unknown_properties_reports_a_bounded_few():
    """Each unknown property's entry lists every unknown property (the original's params):
    10,000 of them made a 990 MB error. At most `MAX_UNKNOWN_REPORTED` are reported."""
    errors = errors_of({f"k{index}": index for index in range(10_000)})
    assert len(errors) == MAX_UNKNOWN_REPORTED
    assert all(len(rules[0].params) == MAX_UNKNOWN_REPORTED for rules in errors.values())


def test_past_the_budget_an_array_is_not_checked_and_never_reported_falsely():
    """An array reached after the budget is spent gets no entry at all; without this, its
    validators saw no items and reported `minItems` for an array that had some."""

    class Inner(StrictSchema):
        items = List(Nested(Item), min_items=1)

    class Outer(StrictSchema):
        failing = List(Nested(Item))
        later = Nested(Inner)

    with bounded_errors(3) as budget, pytest.raises(ValidationError) as raised:
        Outer().load({"failing": [{}] * 10, "later": {"items": [{"code": "a"}]}})
    assert "later" not in raised.value.messages
    assert budget.skipped


def test_the_budget_says_when_checking_stopped():
    with bounded_errors(3) as budget:
        errors_of({"unbounded": [{}] * 3})
    assert not budget.skipped
    with bounded_errors(3) as budget:
        errors_of({"unbounded": [{}] * 4})
    assert budget.skipped
    outcome = JobOutcome.validation_failed([], incomplete=budget.skipped)
    assert outcome.error["invalid_incomplete"] is True


def test_the_entity_a_route_names_is_part_of_the_request_hash():
    """Closing two episodes with the same body are two submissions, not one."""
    principal = Principal.from_scope_text("user-1", "client-1", "episode:write")
    patient = str(uuid.uuid4())
    first, second = (
        submission_body("episode.close", patient, principal, {"x": 1}, {"episode_id": episode})
        for episode in (str(uuid.uuid4()), str(uuid.uuid4()))
    )
    assert submission_hash(first) != submission_hash(second)
    plain = submission_body("episode.close", patient, principal, {"x": 1})
    assert submission_hash(plain) == submission_hash({**plain, "params": {}})

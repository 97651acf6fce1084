"""The bounds on what one submission may cost (issue 15): arrays refused by their bound
before their items are read, deep nesting refused, replies kept out of the service's queues."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError

from schemas.rules import MAX_ITEMS, List, Nested, StrictSchema, String, bounded_errors
from schemas.validation import MAX_JSON_DEPTH, nested_deeper_than
from service.messaging.broker import Topology, may_reply_to


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

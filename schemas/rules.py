"""Validation rules that know their own name.

marshmallow reports errors as messages. To publish each one as a 422's
`{"rule", "params", "description"}`, every field and validator here raises a `Rule` object
instead of a bare string; `schemas.validation` turns the error tree into the `invalid` list.

The fields are strict: a string is never taken for a number or a boolean, numbers must be
finite, and every string has a maximum length.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from marshmallow import Schema, ValidationError, fields

Validator = Callable[[Any], None]

MAX_STRING_LENGTH = 4_000
MAX_LIST_LENGTH = 500


@dataclass(frozen=True, slots=True)
class Rule:
    rule: str
    description: str
    params: Any = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        return {"rule": self.rule, "params": self.params, "description": self.description}


def violation(rule: Rule) -> ValidationError:
    """The error a validator raises. A list, as marshmallow's composite validators expect."""
    return ValidationError([rule])


REQUIRED = Rule("required", "required property is missing")
NULL = Rule("required", "must not be null")
UNKNOWN = Rule("unknown", "is not allowed: unknown property")


def type_rule(expected: str) -> Rule:
    return Rule("type", f"type mismatch: expected {expected}", [expected])


class StrictSchema(Schema):
    """Rejects unknown properties (marshmallow's default, stated here) with named rules."""

    error_messages = {"unknown": UNKNOWN, "type": type_rule("object")}  # noqa: RUF012


class _RuleMessages:
    default_error_messages = {  # noqa: RUF012
        "required": REQUIRED,
        "null": NULL,
        "validator_failed": Rule("invalid", "is invalid"),
    }


class String(_RuleMessages, fields.String):
    default_error_messages = {  # noqa: RUF012
        "invalid": type_rule("string"),
        "invalid_utf8": Rule("format", "is not valid UTF-8", ["utf-8"]),
    }

    def __init__(
        self, *, max_length: int = MAX_STRING_LENGTH, min_length: int = 1, **kwargs: Any
    ) -> None:
        validators = [length(min_length, max_length), *_as_list(kwargs.pop("validate", None))]
        super().__init__(validate=validators, **kwargs)


class UUIDString(String):
    """A UUID kept as its canonical lowercase string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=36, min_length=1, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            raise violation(Rule("uuid", "is not a valid UUID", ["uuid"])) from None
        if str(parsed) != text.lower() or len(text) != 36:
            raise violation(Rule("uuid", "is not a valid UUID", ["uuid"]))
        return str(parsed)


class Boolean(_RuleMessages, fields.Boolean):
    """`true` or `false`: not "true", not 1 (which Python takes for True)."""

    default_error_messages = {"invalid": type_rule("boolean")}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Integer(_RuleMessages, fields.Integer):
    default_error_messages = {  # noqa: RUF012
        "invalid": type_rule("integer"),
        "too_large": Rule("number", "is too large"),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._validated(value)


class Number(_RuleMessages, fields.Float):
    """A finite JSON number (integer or decimal); strings are not numbers."""

    default_error_messages = {  # noqa: RUF012
        "invalid": type_rule("number"),
        "too_large": Rule("number", "is too large"),
        "special": Rule("number", "must be a finite number"),
    }

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.make_error("special")
        try:
            return float(value)
        except OverflowError:
            raise self.make_error("too_large") from None


class DateTime(_RuleMessages, fields.AwareDateTime):
    """ISO 8601 date-time; one without an offset is taken as UTC."""

    default_error_messages = {  # noqa: RUF012
        "invalid": Rule("format", "expected an ISO 8601 date-time", ["date-time"]),
        "invalid_awareness": Rule("format", "expected an ISO 8601 date-time", ["date-time"]),
        "format": Rule("format", "expected an ISO 8601 date-time", ["date-time"]),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", default_timezone=UTC, **kwargs)


class Date(_RuleMessages, fields.Date):
    """An ISO 8601 calendar date, kept as its text (`2027-06-30`): BSON has no date type."""

    default_error_messages = {  # noqa: RUF012
        "invalid": Rule("format", "expected an ISO 8601 date", ["date"]),
        "format": Rule("format", "expected an ISO 8601 date", ["date"]),
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return super()._deserialize(value, attr, data, **kwargs).isoformat()

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value if isinstance(value, str) or value is None else value.isoformat()


class Nested(_RuleMessages, fields.Nested):
    default_error_messages = {"type": type_rule("object")}  # noqa: RUF012


class List(_RuleMessages, fields.List):
    default_error_messages = {"invalid": type_rule("array")}  # noqa: RUF012

    def __init__(
        self,
        inner: fields.Field,
        *,
        min_length: int = 0,
        max_length: int = MAX_LIST_LENGTH,
        **kw: Any,
    ) -> None:
        validators = [
            length(min_length, max_length, unit="items"),
            *_as_list(kw.pop("validate", None)),
        ]
        super().__init__(inner, validate=validators, **kw)


def _as_list(validate: Any) -> list[Any]:
    if validate is None:
        return []
    return list(validate) if isinstance(validate, list | tuple) else [validate]


def length(
    minimum: int | None = None, maximum: int | None = None, unit: str = "characters"
) -> Validator:
    def check(value: Sequence[Any]) -> None:
        size = len(value)
        if minimum is not None and size < minimum:
            raise violation(Rule("length", f"expected at least {minimum} {unit}", {"min": minimum}))
        if maximum is not None and size > maximum:
            raise violation(Rule("length", f"expected at most {maximum} {unit}", {"max": maximum}))

    return check


def one_of(choices: Sequence[str]) -> Validator:
    allowed = list(choices)

    def check(value: Any) -> None:
        if value not in allowed:
            raise violation(
                Rule("inclusion", f"value is not allowed in enum: {', '.join(allowed)}", allowed)
            )

    return check


def number_range(minimum: float | None = None, maximum: float | None = None) -> Validator:
    def check(value: float) -> None:
        if minimum is not None and value < minimum:
            raise violation(
                Rule("number", f"expected a value of at least {minimum}", {"min": minimum})
            )
        if maximum is not None and value > maximum:
            raise violation(
                Rule("number", f"expected a value of at most {maximum}", {"max": maximum})
            )

    return check

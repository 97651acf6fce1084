"""Validation rules in the vocabulary of eHealth's validator.

eHealth's medical events service validates requests with JSON schemas (NExJsonSchema) and
renders each failure through EView as `{"rule", "params", "description"}`. An MIS maps those
rule names to its own messages, so ours are the same, with the same params and descriptions:

- a property missing: `required`, `[]`, "required property id was not present";
- a wrong JSON type or null: `cast`, `["string"]`, "type mismatch. Expected String but got
  Integer";
- a property not in the schema: `schema`, the unknown properties, "schema does not allow
  additional properties";
- a value outside an enum: `inclusion`, the allowed values, "value is not allowed in enum";
- too short or too long: `length`, `{"min": n}` or `{"max": n}`, "expected value to have a
  minimum length of 1 but was 0" ("expected a minimum of 1 items but got 0" for arrays);
- a number out of range: `number`, `{"less_than_or_equal_to": n}`, "expected the value to
  be <= 10";
- a pattern (UUIDs): `format`, `[pattern]`, 'string does not match pattern "^...$"';
- a date-time or a date: `datetime` or `date`, `[regex]`, 'expected "x" to be a valid ISO
  8601 date-time'.

Business rules (in the job types) use `invalid`, and `oneOf` for "exactly one of".

marshmallow reports errors as messages; every field and validator here raises a `Rule`
instead of a string, and `schemas.validation` turns the error tree into the `invalid` list.

A `StrictSchema` loads a valid value by a compiled load made from its own fields, ten times
faster than marshmallow's machinery, and leaves any other value to marshmallow, which alone
refuses and says why (`Compiled loads` below).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    missing,
    pre_load,
    validates_schema,
)
from marshmallow.decorators import PRE_LOAD, VALIDATES_SCHEMA
from marshmallow.schema import SCHEMA
from marshmallow.types import ErrorMessages, StrSequenceOrSet

Validator = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Rule:
    rule: str
    description: str
    params: Any = field(default_factory=list)

    def to_document(self, property_name: str | int | None = None) -> dict[str, Any]:
        description = self.description
        if "{property}" in description:
            description = description.replace("{property}", str(property_name))
        return {"rule": self.rule, "params": self.params, "description": description}


def violation(rule: Rule) -> ValidationError:
    """The error a validator raises. A list, as marshmallow's composite validators expect."""
    return ValidationError([rule])


# `{property}` is the missing property's name, filled in where the path is known.
REQUIRED = Rule("required", "required property {property} was not present")
ADDITIONAL_PROPERTIES = "schema does not allow additional properties"
NOT_IN_ENUM = "value is not allowed in enum"

_JSON_TYPE_NAMES = {
    bool: "Boolean",
    int: "Integer",
    float: "Number",
    str: "String",
    dict: "Object",
    list: "Array",
    type(None): "Null",
}


def json_type_of(value: Any) -> str:
    """The JSON type of a parsed value, capitalized as the original's messages say it."""
    return _JSON_TYPE_NAMES.get(type(value), "Object")


def cast_rule(expected: str, value: Any) -> Rule:
    """`expected` is a JSON type: "string", "integer", "number", "boolean", "object", "array"."""
    return Rule(
        "cast",
        f"type mismatch. Expected {expected.capitalize()} but got {json_type_of(value)}",
        [expected],
    )


def _inspect(text: str) -> str:
    """A string as the original quotes it in messages (Elixir's `inspect`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The most unknown properties of one object reported (ours: the original reports every one,
# each entry listing all of them, so that n unknown properties cost n * n).
MAX_UNKNOWN_REPORTED = 20


class StrictSchema(Schema):
    """An object with `additionalProperties: false`: each unknown property is reported at
    its own path, rule `schema`, with every unknown property and its value as params."""

    class Meta:
        unknown = EXCLUDE  # reported by `no_additional_properties`, as the original does

    def load(
        self,
        data: Any,
        *,
        many: bool | None = None,
        partial: bool | StrSequenceOrSet | None = None,
        unknown: str | None = None,
    ) -> Any:
        """marshmallow's load, with a compiled happy path (`_compiled_load`): a value the
        compiled load takes is loaded as marshmallow loads it, in a tenth of the time; any
        other is loaded by marshmallow from the start, which alone says what is wrong."""
        if many is None and partial is None and unknown is None and not _FULL_LOAD.get():
            taken, loaded = compiled_load(self, data)
            if taken:
                return loaded
            if _compiled_load(self) is not None:
                # Its nested schemas too are loaded by marshmallow alone: the compiled load
                # of each would give up again on the same error.
                token = _FULL_LOAD.set(True)
                try:
                    return super().load(data)
                finally:
                    _FULL_LOAD.reset(token)
        return super().load(data, many=many, partial=partial, unknown=unknown)  # type: ignore[arg-type]

    @pre_load
    def an_object(self, data: Any, **_: Any) -> Any:
        """Anything else is a `cast` to an object, as any other property of the wrong type."""
        if not isinstance(data, dict):
            raise violation(cast_rule("object", data))
        return data

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def no_additional_properties(self, _: Any, original: Any, **__: Any) -> None:
        if not isinstance(original, dict):
            return
        known = {f.data_key or name for name, f in self.load_fields.items()}
        unknown: dict[str, Any] = {}
        for key, value in original.items():
            if key not in known:
                unknown[key] = value
                if len(unknown) == MAX_UNKNOWN_REPORTED:  # each entry lists them all: bounded
                    break
        if unknown:
            rule = Rule("schema", ADDITIONAL_PROPERTIES, unknown)
            raise ValidationError({key: [rule] for key in unknown})


class _Typed(fields.Field[Any]):
    """A field of one JSON type: `null` and other types are a `cast` to `json_type`. Mixed in
    before a marshmallow field (`class String(_Typed, fields.String)`), which comes next in
    the MRO."""

    json_type = "string"
    default_error_messages: ErrorMessages = {"required": [REQUIRED]}  # noqa: RUF012

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kw: Any) -> Any:
        if value is None and not getattr(self, "allow_none", False):
            raise violation(cast_rule(self.json_type, None))
        return super().deserialize(value, attr, data, **kw)

    def _accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> Any:
        if not self._accepts(value):
            raise violation(cast_rule(self.json_type, value))
        return super()._deserialize(value, attr, data, **kw)


class String(_Typed, fields.String):
    def __init__(
        self, *, max_length: int | None = None, min_length: int | None = None, **kwargs: Any
    ) -> None:
        validators = _as_list(kwargs.pop("validate", None))
        if min_length is not None or max_length is not None:
            validators.insert(0, length(min_length, max_length))
        super().__init__(validate=validators, **kwargs)

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, str)


UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


class UUIDString(String):
    """eHealth's `uuid`: a string matching its pattern (lowercase, version 1 to 5)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            validate=[pattern(UUID_PATTERN, whole=True), *_as_list(kwargs.pop("validate", None))],
            **kwargs,
        )


class Boolean(_Typed, fields.Boolean):
    """`true` or `false`: not "true", not 1 (which Python takes for True)."""

    json_type = "boolean"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Integer(_Typed, fields.Integer):
    json_type = "integer"

    def __init__(self, **kwargs: Any) -> None:
        validators = [_int64, *_as_list(kwargs.pop("validate", None))]
        super().__init__(strict=True, validate=validators, **kwargs)

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


# The integers MongoDB stores (BSON's int64); JSON has no bound, orjson reads up to 2^64 - 1.
INT64 = (-(2**63), 2**63 - 1)


def _int64(value: Any) -> None:
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        bound = INT64[1] if value > 0 else INT64[0]
        sign, key = (
            ("<=", "less_than_or_equal_to") if value > 0 else (">=", "greater_than_or_equal_to")
        )
        raise violation(Rule("number", f"expected the value to be {sign} {bound}", {key: bound}))


class Number(_Typed, fields.Raw):
    """A finite JSON number (integer or decimal), kept as given; strings are not numbers.
    Integers beyond 64 bits, which no MongoDB document holds, are out of range."""

    json_type = "number"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=[_int64, *_as_list(kwargs.pop("validate", None))], **kwargs)

    def _accepts(self, value: Any) -> bool:
        return _is_number(value) and not (isinstance(value, float) and not math.isfinite(value))


# The patterns the original's validator checks formats with, shown in its params as Elixir
# prints a regex.
DATE_TIME_REGEX = (
    r"^(-?(?:[1-9][0-9]*)?[0-9]{4})-(1[0-2]|0[1-9])-(3[01]|0[1-9]|[12][0-9])"
    r"T(2[0-3]|[01][0-9]):([0-5][0-9]):([0-5][0-9])(\.[0-9]+)?"
    r"(Z|[+-](?:2[0-3]|[01][0-9]):[0-5][0-9])?$"
)
DATE_REGEX = (
    r"^([\+-]?\d{4}(?!\d{2}\b))((-?)((0[1-9]|1[0-2])(\3([12]\d|0[1-9]|3[01]))?"
    r"|W([0-4]\d|5[0-2])(-?[1-7])?|(00[1-9]|0[1-9]\d|[12]\d{2}|3([0-5]\d|6[1-6])))?)?$"
)
# ASCII digits only, as in the original's regex engine (Python's \d takes any digit).
_DATE_TIME = re.compile(DATE_TIME_REGEX, re.ASCII)
_DATE = re.compile(DATE_REGEX, re.ASCII)


class DateTime(String):
    """`format: date-time`: ISO 8601; one without an offset is taken as UTC. Kept as an aware
    datetime, so that MongoDB stores a date and reads can compare it."""

    # marshmallow types what a String loads as `str`; this one loads the datetime its text
    # names. It stays a String: apispec documents a field by the first class of its MRO that
    # it maps (here "type": "string"), so another base would change the OpenAPI document.
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> datetime:  # type: ignore[override]
        text = super()._deserialize(value, attr, data, **kw)
        if not _DATE_TIME.match(text):
            raise violation(
                Rule(
                    "datetime",
                    f"expected {_inspect(text)} to be a valid ISO 8601 date-time",
                    [f"~r/{DATE_TIME_REGEX}/"],
                )
            )
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            aware.astimezone(UTC)  # an instant MongoDB can store (years 1 to 9999 in UTC)
        except (ValueError, OverflowError):
            raise violation(
                Rule("datetime", f"expected {_inspect(text)} to be an existing date-time")
            ) from None
        return aware

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value


class Date(String):
    """`format: date`: an ISO 8601 calendar date, kept as its text (BSON has no date type)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        text = super()._deserialize(value, attr, data, **kw)
        if not _DATE.match(text):
            raise violation(
                Rule(
                    "date",
                    f"expected {_inspect(text)} to be a valid ISO 8601 date",
                    [f"~r/{DATE_REGEX}/"],
                )
            )
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise violation(
                Rule("date", f"expected {_inspect(text)} to be an existing date")
            ) from None
        # Kept as `YYYY-MM-DD` whatever ISO form was sent (`20200101`, `2020-W01-1`), so that
        # stored days compare and sort as text.
        return day.isoformat()


class Nested(_Typed, fields.Nested):
    json_type = "object"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def _deserialize(
        self,
        value: Any,
        attr: str | None,
        data: Any,
        partial: bool | StrSequenceOrSet | None = None,
        **kw: Any,
    ) -> Any:
        # marshmallow's Nested takes `partial` positionally as well; passed on by name.
        return super()._deserialize(value, attr, data, partial=partial, **kw)


class List(_Typed, fields.List):
    """An array. Over `MAX_ITEMS` items, it is refused with its bound alone (the contract's
    `maxItems`, or `MAX_ITEMS` where the contract sets none) before any item is checked, so
    that a body of many small items costs one check; up to there, every item is checked and
    the bound reported with their errors, as the original does. Past the error budget of the
    load (`bounded_errors`), its items are no longer checked."""

    json_type = "array"

    def __init__(
        self,
        inner: fields.Field,
        *,
        min_items: int | None = None,
        max_items: int | None = None,
        **kw: Any,
    ) -> None:
        validators = _as_list(kw.pop("validate", None))
        if min_items is not None or max_items is not None:
            validators.insert(0, item_count(min_items, max_items))
        super().__init__(inner, validate=validators, **kw)
        self.max_items = MAX_ITEMS if max_items is None else min(max_items, MAX_ITEMS)

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kw: Any) -> Any:
        """Also reports the bounds (`minItems`, `maxItems`) when an item fails: the original
        reports every error at once, and marshmallow runs a field's validators only when every
        item is valid."""
        if isinstance(value, list) and len(value) > MAX_ITEMS:
            item_count(None, self.max_items)(value)  # raises
        budget = _ERROR_BUDGET.get()
        if budget is not None and budget.spent() and isinstance(value, list):
            # Past the budget, an array is not checked at all: no entry, never a false one
            # (its validators would otherwise see no items).
            budget.skipped = True
            return value
        try:
            return super().deserialize(value, attr, data, **kw)
        except ValidationError as error:
            if not isinstance(value, list) or not isinstance(error.messages, dict):
                raise
            bounds: list[Any] = []
            for validator in self.validators:
                try:
                    validator(value)
                except ValidationError as bound:
                    bounds.extend(bound.messages)
            if not bounds:
                raise
            raise ValidationError(
                {**error.messages, SCHEMA: bounds}, valid_data=error.valid_data
            ) from None

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> list[Any]:
        """marshmallow's, but stops checking items once the load's error budget is spent."""
        if not self._accepts(value):
            raise violation(cast_rule(self.json_type, value))
        budget = _ERROR_BUDGET.get()
        result: list[Any] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            if budget is not None and budget.spent():
                budget.skipped = True
                break
            try:
                result.append(self.inner.deserialize(item, **kw))
            except ValidationError as error:
                if error.valid_data is not None:
                    result.append(error.valid_data)
                errors[index] = error.messages
                if budget is not None:
                    budget.failed_items += 1
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


# The most items an array may hold where the contract sets no `maxItems` (ours: the
# contract's own bounds are 1 and 50; no real coding, component or reference list comes near).
MAX_ITEMS = 100
# How many failing array items a load checks before it stops checking more: far more than
# the 10,000 bytes of a stored error can show (each failing item is at least one entry of
# about 100 bytes), so the error a client reads is the same; the work and memory of a
# hostile body stay bounded.
MAX_FAILING_ITEMS = 1_000


@dataclass(slots=True)
class ErrorBudget:
    limit: int
    failed_items: int = 0
    skipped: bool = False  # whether some array went unchecked, or was checked only in part

    def spent(self) -> bool:
        return self.failed_items >= self.limit


_ERROR_BUDGET: ContextVar[ErrorBudget | None] = ContextVar("error_budget", default=None)


@contextmanager
def bounded_errors(limit: int = MAX_FAILING_ITEMS) -> Iterator[ErrorBudget]:
    """Around a load: arrays stop checking their items after `limit` failing items in all."""
    budget = ErrorBudget(limit)
    token = _ERROR_BUDGET.set(budget)
    try:
        yield budget
    finally:
        _ERROR_BUDGET.reset(token)


class JsonObject(_Typed, fields.Dict):
    """Any JSON object; its content is checked later, by a schema of its own."""

    json_type = "object"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, dict)


# --- Compiled loads ----------------------------------------------------------------------------
# marshmallow spends most of a load in its own machinery: per nested object a schema load with
# its hooks, an error store, a validator wrapper per field (about 20 us per object, 190
# objects in the example package). A `StrictSchema` is compiled once, from its own fields, into
# plain functions that load a valid value as marshmallow does (the same output, key for key and
# in the same order; the same validators, called on the same values) and give up at the first
# thing they do not take as it is. Given up, the value is loaded by marshmallow from the start:
# what a load accepts, refuses and says (every 422) stays marshmallow's. What is not compiled
# (a field class or a hook not listed here) is left to marshmallow, field by field.


class _NotFast(Exception):
    """The compiled load does not take this value as it is: marshmallow loads it."""


# Set while marshmallow loads a value the compiled load gave up: its nested schemas are loaded
# by marshmallow too (their compiled loads would give up again, at every level).
_FULL_LOAD: ContextVar[bool] = ContextVar("full_load", default=False)
_ABSENT = object()
# The hooks of a `StrictSchema`, the compiled load does their work.
_STRICT_HOOKS = {PRE_LOAD: ["an_object"], VALIDATES_SCHEMA: ["no_additional_properties"]}
# A compiled field: (the value, the object it is a property of) -> what marshmallow loads.
_Load = Callable[[Any, Any], Any]


@contextmanager
def marshmallow_only() -> Iterator[None]:
    """Within: every load by marshmallow alone, the compiled loads left out (what they are
    checked and measured against)."""
    token = _FULL_LOAD.set(True)
    try:
        yield
    finally:
        _FULL_LOAD.reset(token)


def marshmallow_load(schema: Schema, data: Any) -> Any:
    """`schema.load(data)` by marshmallow alone."""
    with marshmallow_only():
        return schema.load(data)


def compiled_load(schema: Schema, data: Any) -> tuple[bool, Any]:
    """`(True, schema.load(data))` when the compiled load of `schema` takes `data` (a valid
    value, loaded as marshmallow loads it), else `(False, None)`: marshmallow is then to load
    it, and to say what is wrong with it."""
    if _FULL_LOAD.get():
        return False, None
    budget = _ERROR_BUDGET.get()
    if budget is not None and budget.spent():
        return False, None  # marshmallow leaves arrays unchecked now (`List`): its load
    fast = _compiled_load(schema)
    if fast is None:
        return False, None
    # A valid value fails no item: the budget is not spent by it, and not spent now, so that
    # it does not change what is loaded. Set aside, so that what the compiled load leaves to
    # marshmallow (a field class it does not know) counts nothing twice when it gives up.
    token = _ERROR_BUDGET.set(None)
    try:
        return True, fast(data, None)
    except Exception:  # not taken as it is: marshmallow decides
        return False, None
    finally:
        _ERROR_BUDGET.reset(token)


def is_compiled(schema: Schema) -> bool:
    """Whether `schema` loads a valid value by its compiled load."""
    return _compiled_load(schema) is not None


def _compiled_load(schema: Schema) -> _Load | None:
    """The compiled load of `schema` (made at its first load), None where it has none."""
    cached = schema.__dict__.get("_compiled_load")
    if cached is not None and cached[0] is schema:  # a copy compiles its own (`Nested`)
        return cached[1]
    schema.__dict__["_compiled_load"] = (schema, None)  # a schema nested in itself: marshmallow
    compiled = _compile_schema(schema)
    schema.__dict__["_compiled_load"] = (schema, compiled)
    return compiled


def _compile_schema(schema: Schema) -> _Load | None:
    if not isinstance(schema, StrictSchema) or schema.many or schema.partial:
        return None
    if schema.unknown != EXCLUDE or schema.dict_class is not dict:
        return None
    hooks = {
        tag: [name for name, *_ in entries] for tag, entries in schema._hooks.items() if entries
    }
    cls = type(schema)
    if (
        hooks != _STRICT_HOOKS
        or cls.an_object is not StrictSchema.an_object
        or cls.no_additional_properties is not StrictSchema.no_additional_properties
    ):
        return None
    plan: list[tuple[str, str, _Load, bool]] = []
    for name, field_obj in schema.load_fields.items():
        key = field_obj.data_key if field_obj.data_key is not None else name
        attribute = field_obj.attribute or name
        if (
            "." in attribute  # marshmallow would nest it
            or key != (field_obj.data_key or name)  # named otherwise by the unknown check
            or field_obj.load_default is not missing
            # Field-level hooks (marshmallow 4.3 and later; none before).
            or getattr(field_obj, "pre_load", None)
            or getattr(field_obj, "post_load", None)
        ):
            return None
        plan.append((key, attribute, _compile_field(field_obj, key), field_obj.required))
    # By the key a client sends: (its place among the fields, where it is loaded, how).
    steps = {
        key: (index, attribute, load_field)
        for index, (key, attribute, load_field, _) in enumerate(plan)
    }
    attributes = tuple(attribute for _, attribute, *_ in plan)
    required_keys = frozenset(key for key, *_, needed in plan if needed)

    def load(data: Any, parent: Any = None) -> dict[str, Any]:
        if type(data) is not dict:
            raise _NotFast
        loaded: dict[str, Any] = {}
        last = -1
        in_order = True
        for key, value in data.items():
            step = steps.get(key)
            if step is None:  # a property the schema does not name
                raise _NotFast
            index, attribute, load_field = step
            loaded[attribute] = load_field(value, data)
            if index < last:
                in_order = False
            last = index
        if required_keys and not required_keys <= data.keys():
            raise _NotFast
        if in_order:
            return loaded
        # In the order of the schema's fields, as marshmallow loads them.
        return {attribute: loaded[attribute] for attribute in attributes if attribute in loaded}

    return load


def _compile_field(field_obj: fields.Field, key: str | None) -> _Load:
    """`field_obj.deserialize` of a value of the object `parent` as marshmallow calls it, for
    the field classes listed; marshmallow's own call for any other."""
    kind = type(field_obj)
    validators = tuple(field_obj.validators)
    allow_none = field_obj.allow_none
    typed: _Load | None = None
    if (kind is String or kind is UUIDString) and not allow_none:
        return _string(validators)  # the most common: one closure, the validators inlined
    if kind is String or kind is UUIDString:

        def typed(value: Any, parent: Any) -> Any:
            if type(value) is not str:
                raise _NotFast
            return value

    elif kind is DateTime or kind is Date:
        parse = field_obj._deserialize

        def typed(value: Any, parent: Any) -> Any:
            if type(value) is not str:
                raise _NotFast
            return parse(value, key, parent)

    elif kind is Boolean and True in field_obj.truthy and False in field_obj.falsy:  # type: ignore[attr-defined]

        def typed(value: Any, parent: Any) -> Any:
            if type(value) is not bool:
                raise _NotFast
            return value

    elif kind is Number:

        def typed(value: Any, parent: Any) -> Any:
            if type(value) is not int and (type(value) is not float or not math.isfinite(value)):
                raise _NotFast
            return value

    elif kind is Nested and not field_obj.many and field_obj.unknown is None:  # type: ignore[attr-defined]
        # The nested schema's compiled load, when it has one (it takes the parent too).
        typed = _compiled_load(field_obj.schema)  # type: ignore[attr-defined]

    elif kind is List:
        load_item = _compile_field(field_obj.inner, None)  # type: ignore[attr-defined]

        def typed(value: Any, parent: Any) -> Any:
            if type(value) is not list or len(value) > MAX_ITEMS:
                raise _NotFast
            return [load_item(item, None) for item in value]

    if typed is None:
        deserialize = field_obj.deserialize

        def delegated(value: Any, parent: Any) -> Any:
            return deserialize(value, key, parent)

        return delegated
    if not validators and not allow_none:
        return typed  # `None` is refused by the type check

    def checked(value: Any, parent: Any) -> Any:
        if value is None:
            if allow_none:
                return None
            raise _NotFast
        loaded = typed(value, parent)
        for validator in validators:
            validator(loaded)
        return loaded

    return checked


def _string(validators: tuple[Validator, ...]) -> _Load:
    """A string that may not be null: as it is, once its validators passed."""
    if not validators:

        def any_string(value: Any, parent: Any) -> Any:
            if type(value) is not str:
                raise _NotFast
            return value

        return any_string
    if len(validators) == 1:
        (validator,) = validators

        def one_check(value: Any, parent: Any) -> Any:
            if type(value) is not str:
                raise _NotFast
            validator(value)
            return value

        return one_check

    def checks(value: Any, parent: Any) -> Any:
        if type(value) is not str:
            raise _NotFast
        for validator in validators:
            validator(value)
        return value

    return checks


def _as_list(validate: Any) -> list[Any]:
    if validate is None:
        return []
    return list(validate) if isinstance(validate, list | tuple) else [validate]


def length(minimum: int | None = None, maximum: int | None = None) -> Validator:
    """`minLength` / `maxLength` of a string."""

    def check(value: str) -> None:
        size = len(value)
        if minimum is not None and size < minimum:
            raise violation(
                Rule(
                    "length",
                    f"expected value to have a minimum length of {minimum} but was {size}",
                    {"min": minimum},
                )
            )
        if maximum is not None and size > maximum:
            raise violation(
                Rule(
                    "length",
                    f"expected value to have a maximum length of {maximum} but was {size}",
                    {"max": maximum},
                )
            )

    return check


def item_count(minimum: int | None = None, maximum: int | None = None) -> Validator:
    """`minItems` / `maxItems` of an array."""

    def check(value: Sequence[Any]) -> None:
        size = len(value)
        if minimum is not None and size < minimum:
            raise violation(
                Rule(
                    "length",
                    f"expected a minimum of {minimum} items but got {size}",
                    {"min": minimum},
                )
            )
        if maximum is not None and size > maximum:
            raise violation(
                Rule(
                    "length",
                    f"expected a maximum of {maximum} items but got {size}",
                    {"max": maximum},
                )
            )

    return check


def one_of(choices: Sequence[Any]) -> Validator:
    """`enum`."""
    allowed = list(choices)

    def check(value: Any) -> None:
        if value not in allowed:
            raise violation(Rule("inclusion", NOT_IN_ENUM, allowed))

    return check


def pattern(regex: str, *, whole: bool = False) -> Validator:
    """`pattern`. With `whole`, `$` does not take a final newline (Python's and the
    original's `$` both do): an id is used in links, where a newline has no place."""
    compiled = re.compile(regex, re.ASCII)
    matches = compiled.fullmatch if whole else compiled.search

    def check(value: str) -> None:
        if not matches(value):
            raise violation(
                Rule("format", f"string does not match pattern {_inspect(regex)}", [regex])
            )

    return check


def number_range(minimum: float | None = None, maximum: float | None = None) -> Validator:
    """`minimum` / `maximum`, inclusive."""

    def check(value: float) -> None:
        if minimum is not None and value < minimum:
            raise violation(
                Rule(
                    "number",
                    f"expected the value to be >= {minimum}",
                    {"greater_than_or_equal_to": minimum},
                )
            )
        if maximum is not None and value > maximum:
            raise violation(
                Rule(
                    "number",
                    f"expected the value to be <= {maximum}",
                    {"less_than_or_equal_to": maximum},
                )
            )

    return check


def invalid(description: str, params: Any = None) -> Rule:
    """A business rule's failure, as the original's `Core.ValidationError` renders it."""
    return Rule("invalid", description, [] if params is None else params)


# The dictionaries of eHealth's registry a load checks codes against: name -> allowed codes.
# Set around a load by the job that knows them (`use_dictionaries`); a dictionary that is not
# there checks nothing, as the original's schema mapper leaves such a property as it is.
_DICTIONARIES: ContextVar[Mapping[str, Collection[str]] | None] = ContextVar(
    "dictionaries", default=None
)


@contextmanager
def use_dictionaries(dictionaries: Mapping[str, Collection[str]]) -> Iterator[None]:
    token = _DICTIONARIES.set(dictionaries)
    try:
        yield
    finally:
        _DICTIONARIES.reset(token)


def dictionary(name: str, instead_of: Sequence[Any] | None = None) -> Validator:
    """A property described "Dictionary: <name>" in the original's schema: its value must be
    a key of that dictionary (`inclusion`, with the dictionary's keys in order as params).
    The dictionary takes the place of the property's enum (`instead_of`), as the original's
    schema mapper does; without the dictionary, the enum holds."""
    enum = one_of(instead_of) if instead_of is not None else None

    def check(value: Any) -> None:
        allowed = (_DICTIONARIES.get() or {}).get(name)
        if allowed is None:
            if enum is not None:
                enum(value)
        elif value not in allowed:
            raise violation(Rule("inclusion", NOT_IN_ENUM, sorted(allowed)))

    # The dictionary it checks against, on the validator for whoever inspects a field. A
    # function takes attributes, but a `def` cannot declare one to mypy.
    check.dictionary = name  # type: ignore[attr-defined]
    return check

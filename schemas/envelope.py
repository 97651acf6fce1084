"""The `data` + `meta` envelope every response is wrapped in, and the request-error variant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields

from schemas.validation import InvalidEntrySchema


@dataclass(frozen=True, slots=True)
class Meta:
    """What `meta` says of a response: `code` is always the HTTP status."""

    code: int
    url: str
    request_id: str


class UtcDateTime(fields.Field):
    """ISO 8601 in UTC with milliseconds and `Z`, as eHealth's medical events service writes
    dates: `2018-08-02T10:45:16.000Z`."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:  # the driver was not asked for aware datetimes: BSON is UTC
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class MetaSchema(Schema):
    code = fields.Integer(required=True)
    url = fields.String(required=True)
    type = fields.Constant("object")
    request_id = fields.String(required=True)


def envelope_schema(data_schema: type[Schema], name: str) -> Schema:
    """An instance of `{"data": <data_schema>, "meta": MetaSchema}`, built once at import."""
    envelope = Schema.from_dict(
        {
            "data": fields.Nested(data_schema, required=True),
            "meta": fields.Nested(MetaSchema, required=True),
        },
        name=name,
    )
    return envelope()


META = MetaSchema()


def dump_envelope(data: dict[str, Any], meta: Meta) -> dict[str, Any]:
    """`{"data": data, "meta": ...}` for a `data` its own schema dumped already: what the
    envelope schemas (`envelope_schema`) produce, in two steps, so that a `data` that never
    changes can be dumped once and wrapped for each request."""
    return {"data": data, "meta": META.dump(meta)}


class RequestErrorSchema(Schema):
    """An error of the request itself (401, 403, 404, 405, 413, 422, 500, 503)."""

    type = fields.String(required=True)
    message = fields.String(required=True)
    # Only for 422: where the body is unusable, in the shape of a job's 422.
    invalid = fields.List(fields.Nested(InvalidEntrySchema))


class ErrorEnvelopeSchema(Schema):
    error = fields.Nested(RequestErrorSchema, required=True)
    meta = fields.Nested(MetaSchema, required=True)


ERROR_ENVELOPE = ErrorEnvelopeSchema()


def dump_error(
    meta: Meta, error_type: str, message: str, invalid: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if invalid is not None:
        error["invalid"] = invalid
    return ERROR_ENVELOPE.dump({"error": error, "meta": meta})

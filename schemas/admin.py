"""The operators' endpoints (`/api/admin/...`): their query, their bodies, their responses.

A job is shown with what identifies it (ids of the job, client, user, patient and request)
and with its client's rendering of it, the `data` of `GET /api/jobs/{id}`; never with the
package it carried, which the job document does not hold.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.envelope import MetaSchema, UtcDateTime, envelope_schema
from schemas.jobs import StatusCode, StatusLabel, job_data_schema
from service.domain.jobs import JobStatus

MAX_PAGE = 200
STATUS_LABELS = tuple(status.label for status in JobStatus)


class Cursor(fields.Field):
    """Where a page ends (the last job's `order_key`), opaque to clients."""

    PATTERN = re.compile(r"\d{17}\|[A-Za-z0-9_-]{1,64}")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            padded = str(value) + "=" * (-len(str(value)) % 4)
            key = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        except (ValueError, binascii.Error, UnicodeError):
            raise ValidationError("is not a cursor this API gave") from None
        if not self.PATTERN.fullmatch(key):
            raise ValidationError("is not a cursor this API gave")
        return key


class AwareDateTime(fields.DateTime):
    """An ISO 8601 date-time, in UTC (without an offset it is taken as UTC)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        except (OverflowError, ValueError):  # 0001-01-01T00:00:00+05:00 has no UTC time
            raise ValidationError("is out of range") from None


class AdminJobsQuerySchema(Schema):
    """`GET /api/admin/jobs` query parameters."""

    status = fields.String(validate=validate.OneOf(STATUS_LABELS))
    type = fields.String(validate=validate.Length(min=1, max=100))
    client_id = fields.String(validate=validate.Length(min=1, max=255))
    since = AwareDateTime()
    cursor = Cursor()
    order = fields.String(validate=validate.OneOf(("newest", "oldest")), load_default="newest")
    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_PAGE), load_default=50)


class ReplayRequestSchema(Schema):
    """`POST /api/admin/dead-letters/replay`: `{}` (all), `{"job_ids": [...]}`, `{"limit": N}`."""

    job_ids = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        validate=validate.Length(min=1, max=1_000),
    )
    limit = fields.Integer(validate=validate.Range(min=1))

    @validates_schema
    def one_way(self, data: dict[str, Any], **_: Any) -> None:
        if "job_ids" in data and "limit" in data:
            raise ValidationError("give job_ids or limit, not both")


class AdminJobSchema(Schema):
    id = fields.String(attribute="_id", required=True)
    type = fields.String()
    status = StatusLabel(required=True)
    status_code = StatusCode()
    client_id = fields.String(allow_none=True)
    user_id = fields.String(allow_none=True)
    patient_id = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    inserted_at = UtcDateTime()
    updated_at = UtcDateTime()
    job = fields.Method("client_rendering")

    def client_rendering(self, job: dict[str, Any]) -> dict[str, Any]:
        """What `GET /api/jobs/{id}` says of the job, in its `data`."""
        return job_data_schema(job).dump(job)


class PagingSchema(Schema):
    limit = fields.Integer(required=True)
    next_cursor = Cursor(allow_none=True)


class AdminJobPageSchema(Schema):
    data = fields.List(fields.Nested(AdminJobSchema), required=True)
    paging = fields.Nested(PagingSchema, required=True)
    meta = fields.Nested(MetaSchema, required=True)


class PendingSchema(Schema):
    count = fields.Integer(required=True)
    # True when there are more than `count`: counting stops there, to read no more.
    capped = fields.Boolean(required=True)
    oldest_inserted_at = UtcDateTime(allow_none=True)
    oldest_age_seconds = fields.Float(allow_none=True)


class WindowSchema(Schema):
    """Jobs finished within a window (the last hour, the last day)."""

    finished = fields.Integer(required=True)
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    by_status_code = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    processing_ms_p50 = fields.Float(allow_none=True)
    processing_ms_p95 = fields.Float(allow_none=True)


class MinuteSchema(Schema):
    minute = fields.String(required=True)
    processed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    failed_with_error = fields.Integer(required=True)


class QueueSchema(Schema):
    ready = fields.Integer(allow_none=True)  # None: the broker cannot be asked now
    dead_letters = fields.Integer(allow_none=True)


class StatsSchema(Schema):
    pending = fields.Nested(PendingSchema, required=True)
    last_hour = fields.Nested(WindowSchema, required=True)
    last_day = fields.Nested(WindowSchema, required=True)
    per_minute = fields.List(fields.Nested(MinuteSchema), required=True)
    queue = fields.Nested(QueueSchema, required=True)
    generated_at = UtcDateTime(required=True)


class ReplayedSchema(Schema):
    replayed = fields.Integer(required=True)
    dead_letters = fields.Integer(allow_none=True)


ADMIN_JOBS_QUERY = AdminJobsQuerySchema()
REPLAY_REQUEST = ReplayRequestSchema()
ADMIN_JOB_PAGE = AdminJobPageSchema()
ADMIN_JOB = envelope_schema(AdminJobSchema, "AdminJobEnvelope")
STATS = envelope_schema(StatsSchema, "StatsEnvelope")
REPLAYED = envelope_schema(ReplayedSchema, "ReplayedEnvelope")

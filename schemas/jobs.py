"""Job documents turned into the response variants of `GET /api/jobs/{id}`, as eHealth's
medical events service renders them.

A stored error always has the shape `{"type", "message"[, "invalid"]}`. How it renders depends
on the status code, as in the published examples:

| job                       | HTTP | `error`                                   |
|---------------------------|------|-------------------------------------------|
| failed 403, 404           | 200  | the message, a string                     |
| failed 422                | 200  | `{type, message, invalid: [...]}`         |
| failed (any other code)   | 200  | `{message, type}` (409: request_conflict) |
| failed 499 (cancelled)    | 200  | `{message, type: cancelled}`, as 409's    |
| failed_with_error (500)   | 200  | `{message, type: internal_error}`         |

The client's own list (`GET /api/jobs`, `schemas.job_queries`) renders each item as this
module renders a job's `data` (`job_data_schema`), after its `id` and `type`.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from schemas.envelope import Meta, UtcDateTime, dump_envelope, envelope_schema
from schemas.validation import InvalidEntrySchema
from service.domain.jobs import JobStatus, job_href

MESSAGE_ONLY_STATUS_CODES = frozenset({403, 404})


class StatusCode(fields.Field):
    """Stored as an integer, published as a string (`"422"`), as the published examples of
    eHealth's `GET /api/jobs/{id}` show it."""

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else str(value)


class StatusLabel(fields.Field):
    """Stored as an integer, published as its name: `pending`, `processed`, ..."""

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else JobStatus(value).label


class LinkSchema(Schema):
    entity = fields.String(required=True)
    href = fields.String(required=True)


class ValidationErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)
    invalid = fields.List(fields.Nested(InvalidEntrySchema), required=True)
    # Present only when the list was trimmed to the 10,000-byte cap.
    invalid_total = fields.Integer()
    # Present (true) only when checking stopped before the end of the request: past 1,000
    # failing array items (`schemas.rules.MAX_FAILING_ITEMS`), its other errors are not known.
    invalid_incomplete = fields.Boolean()


class TypedErrorSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)


class _JobSchema(Schema):
    status = StatusLabel(required=True)
    eta = UtcDateTime(required=True)


class JobLinks(fields.Field[str]):
    """A pending job's one link, to itself, made from its id."""

    def _serialize(self, value: str | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:  # as marshmallow's fields serialize None (a stored job has an id)
            return None
        return LINKS.dump([{"entity": "job", "href": job_href(value)}])


class PendingJobSchema(_JobSchema):
    links = JobLinks(attribute="_id", dump_only=True)


class ProcessedJobSchema(_JobSchema):
    links = fields.List(fields.Nested(LinkSchema), attribute="response", dump_default=list)
    status_code = StatusCode(required=True)


class _FailedJobSchema(_JobSchema):
    status_code = StatusCode(required=True)


class FailedWithMessageJobSchema(_FailedJobSchema):
    error = fields.String(attribute="error.message")


class FailedWithTypedErrorJobSchema(_FailedJobSchema):
    error = fields.Nested(TypedErrorSchema)


class FailedValidationJobSchema(_FailedJobSchema):
    error = fields.Nested(ValidationErrorSchema)


LINKS = LinkSchema(many=True)

PENDING = envelope_schema(PendingJobSchema, "PendingJobEnvelope")
PROCESSED = envelope_schema(ProcessedJobSchema, "ProcessedJobEnvelope")
FAILED_WITH_MESSAGE = envelope_schema(FailedWithMessageJobSchema, "FailedWithMessageJobEnvelope")
FAILED_WITH_TYPED_ERROR = envelope_schema(
    FailedWithTypedErrorJobSchema, "FailedWithTypedErrorJobEnvelope"
)
FAILED_VALIDATION = envelope_schema(FailedValidationJobSchema, "FailedValidationJobEnvelope")


# Each variant: the HTTP status of `GET /api/jobs/{id}`, its envelope, and its `data` alone.
VARIANTS: dict[str, tuple[int, Schema, Schema]] = {
    "pending": (200, PENDING, PendingJobSchema()),
    # 303 with no Location header, as eHealth's medical events service answers: the links are
    # in the body.
    "processed": (303, PROCESSED, ProcessedJobSchema()),
    "failed_validation": (200, FAILED_VALIDATION, FailedValidationJobSchema()),
    "failed_with_message": (200, FAILED_WITH_MESSAGE, FailedWithMessageJobSchema()),
    "failed_with_typed_error": (200, FAILED_WITH_TYPED_ERROR, FailedWithTypedErrorJobSchema()),
}


def fields_read_by(*schemas: Schema) -> frozenset[str]:
    """The top-level fields of a document that `schemas` read when they dump it: the name of
    each field, or the first part of its `attribute` (`error.message` reads `error`)."""
    read: set[str] = set()
    for schema in schemas:
        for name, field in schema.fields.items():
            if isinstance(field, fields.Method | fields.Function):
                # What such a field reads cannot be told: a poll could miss it.
                raise TypeError(f"{type(schema).__name__}.{name} reads fields no one can list")
            read.add((field.attribute or name).split(".")[0])
    return frozenset(read)


# What a poll reads of a job (storage projects a poll's read to these): every field a variant
# renders, and what picks the variant (`variant_of`) and the `Retry-After` of a pending job.
JOB_RESPONSE_FIELDS = fields_read_by(*(data for _, _, data in VARIANTS.values())) | {
    "status",
    "status_code",
    "eta",
}


def variant_of(job: dict[str, Any]) -> str:
    status = JobStatus(job["status"])
    if status is JobStatus.PENDING:
        return "pending"
    if status is JobStatus.PROCESSED:
        return "processed"
    status_code = job.get("status_code")
    if status_code == 422:
        return "failed_validation"
    if status_code in MESSAGE_ONLY_STATUS_CODES:
        return "failed_with_message"
    return "failed_with_typed_error"


def job_data_schema(job: dict[str, Any]) -> Schema:
    """The schema of the job's `data` alone, as `GET /api/jobs/{id}` renders it."""
    return VARIANTS[variant_of(job)][2]


def dump_job_data(job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the `data` of the response for a stored job: what the variant's
    schema makes of the job alone (the envelope's `data`), independent of the request."""
    http_status, _, data_schema = VARIANTS[variant_of(job)]
    return http_status, data_schema.dump(job)


def dump_job(job: dict[str, Any], url: str, request_id: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the body of the response for a stored job."""
    http_status, data = dump_job_data(job)
    return http_status, dump_envelope(data, Meta(http_status, url, request_id))


def dump_accepted(job: dict[str, Any], url: str, request_id: str) -> dict[str, Any]:
    """The body of `202 Accepted` for a submission: the pending job, `meta.code` 202."""
    return dump_envelope(VARIANTS["pending"][2].dump(job), Meta(202, url, request_id))

"""Webhooks: the registration API's requests and responses, the deliveries' list, the
operators' dead letters, and the body each endpoint receives (docs/webhooks.md)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from schemas.entity_queries import ListMetaSchema
from schemas.envelope import UtcDateTime, envelope_schema
from schemas.jobs import job_data_schema
from service.domain.jobs import JobStatus

JOB_PROCESSED = "job.processed"
JOB_FAILED = "job.failed"
EVENT_TYPES = (JOB_PROCESSED, JOB_FAILED)
DELIVERY_STATUSES = ("delivered", "retrying", "failed", "dead")
MAX_URL_LENGTH = 2048
MAX_DELIVERIES_PAGE = 100


def event_type_of(job: dict[str, Any]) -> str:
    """`job.processed`, or `job.failed` for `failed` and `failed_with_error`."""
    return JOB_PROCESSED if job["status"] == JobStatus.PROCESSED else JOB_FAILED


# --- requests ---


class CreateWebhookSchema(Schema):
    """`POST /api/webhooks`. The URL's rules past its shape (https, a public address) are the
    use case's (`usecases.webhooks.check_url`); they answer 422 on `$.url` too."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL_LENGTH))
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        required=True,
        validate=validate.Length(min=1, max=len(EVENT_TYPES)),
    )


class DeliveryCursor(fields.Field):
    """Where a page of attempts ends, opaque to clients: the last attempt's `seq` and `_id`
    (`<seq>.<_id>`, base64url); a token of the `seq` alone (given before) still reads."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        seq, last_id = value
        text = f"{seq}.{last_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[int, str | None]:
        try:
            text = str(value)
            padded = text + "=" * (-len(text) % 4)
            decoded = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        except (ValueError, binascii.Error, UnicodeError):
            raise ValidationError("is not a page token this API gave") from None
        seq, dot, last_id = decoded.partition(".")
        if not seq.isdigit() or len(seq) > 20:
            raise ValidationError("is not a page token this API gave")
        if dot and not (0 < len(last_id) <= 64 and last_id.isalnum()):
            raise ValidationError("is not a page token this API gave")
        return int(seq), (last_id if dot else None)


class DeliveriesQuerySchema(Schema):
    """`GET /api/webhooks/{id}/deliveries` query parameters."""

    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_DELIVERIES_PAGE), load_default=20)
    page_token = DeliveryCursor()  # named as `GET /api/jobs` names it


class WebhookReplayRequestSchema(Schema):
    """`POST /api/admin/webhooks/dead-letters/replay`: `{}` (all) or `{"limit": N}`."""

    limit = fields.Integer(validate=validate.Range(min=1))


# --- responses ---


class WebhookEndpointSchema(Schema):
    id = fields.String(attribute="_id", required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    created_at = UtcDateTime(required=True)
    # Until when the previous secret still signs (after a rotation); absent otherwise.
    previous_secret_expires_at = UtcDateTime(allow_none=True)


class WebhookEndpointWithSecretSchema(WebhookEndpointSchema):
    """At creation and at a rotation only: the secret, `whsec_` and base64 of its bytes."""

    secret = fields.String(required=True)


class WebhookListSchema(Schema):
    data = fields.List(fields.Nested(WebhookEndpointSchema), required=True)
    meta = fields.Nested(ListMetaSchema, required=True)


class DeliverySchema(Schema):
    id = fields.String(attribute="_id", required=True)
    webhook_id = fields.String(required=True)
    event_type = fields.String(required=True)
    job_id = fields.String(required=True)
    attempt = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(DELIVERY_STATUSES))
    duration_ms = fields.Float(required=True)
    response_status = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    at = UtcDateTime(required=True)


class DeliveriesPagingSchema(Schema):
    limit = fields.Integer(required=True)
    next_page_token = DeliveryCursor(allow_none=True)


class DeliveriesPageSchema(Schema):
    data = fields.List(fields.Nested(DeliverySchema), required=True)
    paging = fields.Nested(DeliveriesPagingSchema, required=True)
    meta = fields.Nested(ListMetaSchema, required=True)


class WebhookDeadLettersSchema(Schema):
    dead_letters = fields.Integer(allow_none=True)  # None: the broker cannot be asked now


class WebhookReplayedSchema(Schema):
    replayed = fields.Integer(required=True)
    dead_letters = fields.Integer(allow_none=True)


# --- the body each endpoint receives ---


class JobEventDataField(fields.Field):
    """The job's `id` and `type`, then the `data` of `GET /api/jobs/{id}` for it."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        job = value
        return {"id": job["_id"], "type": job.get("type"), **job_data_schema(job).dump(job)}


class WebhookEventSchema(Schema):
    type = fields.String(required=True)
    timestamp = UtcDateTime(required=True)
    data = JobEventDataField(attribute="job", required=True)


CREATE_WEBHOOK = CreateWebhookSchema()
DELIVERIES_QUERY = DeliveriesQuerySchema()
WEBHOOK_REPLAY_REQUEST = WebhookReplayRequestSchema()
WEBHOOK_ENDPOINT = envelope_schema(WebhookEndpointSchema, "WebhookEndpointEnvelope")
WEBHOOK_ENDPOINT_WITH_SECRET = envelope_schema(
    WebhookEndpointWithSecretSchema, "WebhookEndpointWithSecretEnvelope"
)
WEBHOOK_LIST = WebhookListSchema()
DELIVERIES_PAGE = DeliveriesPageSchema()
WEBHOOK_DEAD_LETTERS = envelope_schema(WebhookDeadLettersSchema, "WebhookDeadLettersEnvelope")
WEBHOOK_REPLAYED = envelope_schema(WebhookReplayedSchema, "WebhookReplayedEnvelope")
WEBHOOK_EVENT = WebhookEventSchema()

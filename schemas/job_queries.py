"""A client's own jobs, `GET /api/jobs`: its query parameters, its page token and its page.

Parameters (every one optional, each at most once, no other):

| parameter    | what                                                                      |
|--------------|---------------------------------------------------------------------------|
| `status`     | `pending`, `processed`, `failed` or `failed_with_error`                   |
| `type`       | a job type's name (`encounter_package.create`, ...): one the service has  |
| `since`      | ISO 8601 date-time with an offset (`Z`, `+02:00`): jobs inserted then or later |
| `page_token` | the `paging.next_page_token` of the previous page, with the same filters  |
| `limit`      | items per page, 1 to 100 (20 unless given)                                |

A bad one is a 422 in the error envelope whose `invalid` names it (`$.status`, ...), in the
vocabulary of the entity lists (`schemas.entity_queries`).

The page token is opaque: base64url of the last item's `order_key` and a digest binding it to
the client and the filters it was made for. A token made for another client or other filters,
or not made by this API at all, is a 422 (`$.page_token`). The digest is no secret (there is
no key every API process shares): a client can forge a token for its own list, and it then
only moves its own cursor, since the query always compares the caller's `client_id` as well
(`JobStore.list_for_client`). A forged token never reaches another client's jobs.

Each item renders a job exactly as `GET /api/jobs/{id}` renders its `data`
(`schemas.jobs.job_data_schema`), after its `id` and `type`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from marshmallow import Schema, ValidationError, fields, post_load

from schemas.entity_queries import ListMetaSchema, QueryInteger, load_query_string
from schemas.envelope import Meta
from schemas.jobs import job_data_schema
from schemas.rules import (
    DateTime,
    Rule,
    StrictSchema,
    String,
    invalid,
    number_range,
    one_of,
    violation,
)
from service.domain.jobs import JobQuery, JobStatus, order_key

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
STATUS_BY_LABEL = {status.label: status for status in JobStatus}
NOT_OUR_TOKEN = invalid("is not a page token of this list: start again without it")

_ORDER_KEY = re.compile(r"\d{17}\|[A-Za-z0-9_-]{1,64}", re.ASCII)
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]{1,400}", re.ASCII)
_DIGEST_LENGTH = 16
# A space where an offset's `+` was: what `+` becomes in a query string not percent-encoded.
_PLUS_AS_SPACE = re.compile(r"(T[0-9:.]+) ([0-9]{2}:[0-9]{2})$", re.ASCII)
_OFFSET = re.compile(r"(Z|[+-][0-9]{2}:[0-9]{2})$", re.ASCII)


# --- The page token ------------------------------------------------------------------------------


def _binding(client_id: str, query: JobQuery) -> bytes:
    """What a token is bound to: the client and the filters (the limit may change between
    pages)."""
    since = order_key(query.since, "") if query.since is not None else ""
    status = query.status.label if query.status is not None else ""
    text = "\x00".join(("jobs.v1", client_id, status, query.type or "", since))
    return hashlib.sha256(text.encode()).digest()[:_DIGEST_LENGTH]


def page_token(client_id: str, query: JobQuery, after: str) -> str:
    """The token of the page after the job whose `order_key` is `after`."""
    raw = _binding(client_id, query) + after.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class PageToken:
    """A token as read, not yet checked against the client and filters it is used with."""

    binding: bytes
    after: str


class PageTokenField(String):
    """The opaque `page_token`: what it decodes to is checked by `load_job_list_query`."""

    # A String loading what its text names (see `rules.DateTime`: the OpenAPI document).
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> PageToken:  # type: ignore[override]
        text = super()._deserialize(value, attr, data, **kw)
        if not _TOKEN_TEXT.fullmatch(text):
            raise violation(NOT_OUR_TOKEN)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            after = raw[_DIGEST_LENGTH:].decode("ascii")
        except (ValueError, binascii.Error, UnicodeError):
            raise violation(NOT_OUR_TOKEN) from None
        if len(raw) <= _DIGEST_LENGTH or not _ORDER_KEY.fullmatch(after):
            raise violation(NOT_OUR_TOKEN)
        return PageToken(raw[:_DIGEST_LENGTH], after)


# --- The query -----------------------------------------------------------------------------------


class OffsetDateTime(DateTime):
    """`format: date-time` with its offset (`Z` or `+02:00`): an instant, unambiguous. A space
    in place of the offset's `+` (a query string that was not percent-encoded) is read as `+`."""

    # A String loading what its text names (see `rules.DateTime`: the OpenAPI document).
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> datetime:  # type: ignore[override]
        if isinstance(value, str):
            value = _PLUS_AS_SPACE.sub(r"\1+\2", value)
        moment = super()._deserialize(value, attr, data, **kw)
        if not _OFFSET.search(value):
            raise violation(Rule("datetime", "expected a date-time with an offset (`Z`, `+02:00`)"))
        return moment.astimezone(UTC)


class JobListQuerySchema(StrictSchema):
    """`GET /api/jobs`: the filters, the page token and the limit. `type` is one of the
    service's job types (`job_list_query_schema` makes the schema for them)."""

    status = String(
        validate=one_of(list(STATUS_BY_LABEL)),
        metadata={"enum": list(STATUS_BY_LABEL), "description": "Jobs of this status"},
    )
    since = OffsetDateTime(
        metadata={
            "format": "date-time",
            "description": "Jobs inserted at this instant or later (ISO 8601, with an offset)",
        }
    )
    page_token = PageTokenField(
        metadata={
            "description": "`paging.next_page_token` of the previous page (same filters)",
            "maxLength": 400,
        }
    )
    limit = QueryInteger(
        load_default=DEFAULT_LIMIT,
        validate=number_range(minimum=1, maximum=MAX_LIMIT),
        metadata={
            "minimum": 1,
            "maximum": MAX_LIMIT,
            "description": f"Jobs per page ({DEFAULT_LIMIT} unless given)",
        },
    )

    @post_load
    def a_job_query(self, data: dict[str, Any], **_: Any) -> tuple[JobQuery, PageToken | None]:
        status = data.get("status")
        query = JobQuery(
            status=STATUS_BY_LABEL[status] if status is not None else None,
            type=data.get("type"),
            since=data.get("since"),
            limit=data["limit"],
        )
        return query, data.get("page_token")


@functools.cache
def job_list_query_schema(type_names: tuple[str, ...]) -> JobListQuerySchema:
    """The query's schema for a service with these job types (made once per set)."""
    names = sorted(type_names)
    field = String(
        validate=one_of(names), metadata={"enum": names, "description": "Jobs of this type"}
    )
    # `from_dict` makes a subclass of the class it is called on; marshmallow types it as
    # `type[Schema]`.
    schema = cast(
        "type[JobListQuerySchema]",
        JobListQuerySchema.from_dict({"type": field}, name="JobListQuery"),
    )
    return schema()


def load_job_list_query(
    parameters: Iterable[tuple[str, str]], client_id: str, type_names: Sequence[str]
) -> JobQuery:
    """The client's query from its query string's (name, value) pairs, `client_id` set and
    `after` taken from the page token; a `ValidationError` with every error at once (its
    `messages` for `schemas.validation.invalid_entries`)."""
    schema = job_list_query_schema(tuple(type_names))

    def load(values: dict[str, str]) -> tuple[JobQuery, PageToken | None]:
        query, token = schema.load(values)
        if token is not None and token.binding != _binding(client_id, query):
            raise ValidationError({"page_token": [NOT_OUR_TOKEN]})
        return query, token

    query, token = load_query_string(parameters, load)
    return replace(query, client_id=client_id, after=token.after if token else None)


# --- The page ------------------------------------------------------------------------------------


class JobListItem(fields.Field):
    """A job as `GET /api/jobs/{id}` renders its `data`, after its `id` and `type`."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return {"id": value["_id"], "type": value.get("type"), **job_data_schema(value).dump(value)}


class JobListPagingSchema(Schema):
    limit = fields.Integer(required=True)
    next_page_token = fields.String(required=True, allow_none=True)


class JobListPageSchema(Schema):
    meta = fields.Nested(ListMetaSchema, required=True)
    data = fields.List(JobListItem(), required=True)
    paging = fields.Nested(JobListPagingSchema, required=True)


JOB_LIST_PAGE = JobListPageSchema()


def dump_job_list(
    jobs: list[dict[str, Any]], next_after: str | None, query: JobQuery, meta: Meta
) -> dict[str, Any]:
    """The page: its jobs, and the token of the next page when `next_after` (the last job's
    `order_key`) says one follows."""
    assert query.client_id is not None
    token = page_token(query.client_id, query, next_after) if next_after is not None else None
    return JOB_LIST_PAGE.dump(
        {"meta": meta, "data": jobs, "paging": {"limit": query.limit, "next_page_token": token}}
    )


# --- The cancel's body ---------------------------------------------------------------------------


class CancelRequestSchema(StrictSchema):
    """`POST /api/jobs/{id}/actions/cancel`: no body, or `{}` (any property is a 422)."""


CANCEL_REQUEST = CancelRequestSchema()

"""A submission message and its headers: what the HTTP API and producers publish, what the
consumer reads back.

A submission is persistent JSON; its `message_id` is the job id, its routing key its job type.
Headers: `x-request-id` (the request that submitted it) and, for a submission the HTTP API
wrapped, `x-data-root: $`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aio_pika

from service.domain.request_ids import REQUEST_ID_HEADER, is_sane_request_id

# "$" when the client's document is the whole of `data` as posted to the HTTP API: the paths
# of a 422 are then the client's own (`$.encounter...`), not the message's (`$.data.encounter`).
DATA_ROOT_HEADER = "x-data-root"


def submission_message(
    body: bytes, job_id: str | None, request_id: str | None, data_root: str | None = None
) -> aio_pika.Message:
    headers: dict[str, Any] = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if data_root is not None:
        headers[DATA_ROOT_HEADER] = data_root
    return aio_pika.Message(
        body,
        message_id=job_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


def request_id_in(headers: Mapping[str, Any] | None) -> str | None:
    """The request id a message carries, when it is a sane one."""
    value = (headers or {}).get(REQUEST_ID_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if is_sane_request_id(value) else None


def data_root_in(headers: Mapping[str, Any] | None) -> list[str]:
    """Where the client's own document sits in the body, for the paths of a 422: `$.data`
    for a producer's message, `$` for a submission the HTTP API wrapped."""
    return [] if (headers or {}).get(DATA_ROOT_HEADER) in ("$", b"$") else ["data"]


def delivery_count(headers: Mapping[str, Any] | None) -> int:
    """How many times the broker delivered the message before (quorum queues count)."""
    count = (headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0

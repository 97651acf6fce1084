"""Exceptions for the API's error envelope `{"error": {"type", "message"[, "invalid"]},
"meta": {"code", "url", "type", "request_id"}}`, one class per status the API answers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from .models import InvalidEntry, parse_invalid


class MedeventsError(Exception):
    """An error answer of the API (or no answer: `ConnectionFailed`).

    `status` is the HTTP status (None when no response came), `type` the envelope's
    `error.type` (`access_denied`, `not_found`, `validation_failed`, ...), `message` its
    message, `request_id` the request's id (`meta.request_id`, or the `x-request-id` header)
    to quote to the service's operators, `invalid` the entries of a 422, `body` the parsed
    response (empty when it was not JSON)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        request_id: str | None = None,
        invalid: list[InvalidEntry] | None = None,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.request_id = request_id
        self.invalid = invalid or []
        self.body = body or {}
        # The response's headers (case-insensitive when the client made them).
        self.headers: Mapping[str, str] = headers or {}

    def __str__(self) -> str:
        parts = [str(self.status) if self.status is not None else None, self.type, self.message]
        text = ": ".join(part for part in parts if part)
        return f"{text} (request {self.request_id})" if self.request_id else text


class Unauthorized(MedeventsError):
    """401 `access_denied`: no token, or one that is malformed, expired or wrongly signed."""


class Forbidden(MedeventsError):
    """403 `forbidden`: the token lacks a scope the operation needs."""


class NotFound(MedeventsError):
    """404 `not_found`: an unknown id, another client's job, an unknown patient."""


class Conflict(MedeventsError):
    """409 `request_conflict`: an inactive patient, a job that already finished (cancel)."""


class ValidationFailed(MedeventsError):
    """422 `validation_failed`: `invalid` says which entries broke which rules."""


class ServiceUnavailable(MedeventsError):
    """503 `service_unavailable`: MongoDB or RabbitMQ unreachable; nothing was done. The
    request may be sent again after `retry_after` seconds (the `Retry-After` header)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(MedeventsError):
    """Any other 5xx (500 `internal_error`, a proxy's 502 or 504)."""


class ConnectionFailed(MedeventsError):
    """No answer: the connection could not be made or broke, or the request timed out.
    `sent` tells whether the request may have reached the server (a timeout or a broken
    connection after sending) or certainly did not (the connection was refused)."""

    def __init__(self, message: str, *, sent: bool, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.sent = sent


_CLASSES: dict[int, type[MedeventsError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    503: ServiceUnavailable,
}


def error_for(
    status: int, body: dict[str, Any], headers: Mapping[str, str], reason: str = ""
) -> MedeventsError:
    """The exception for an error response: its class by status, its fields by the envelope
    (what a proxy answers without one still gives an exception of the right class)."""
    raw_error, raw_meta = body.get("error"), body.get("meta")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    message = str(error.get("message") or reason or f"HTTP {status}")
    kwargs: dict[str, Any] = {
        "status": status,
        "type": error.get("type"),
        "request_id": meta.get("request_id") or _header(headers, "x-request-id"),
        "invalid": parse_invalid(error.get("invalid")),
        "body": body,
        "headers": headers,
    }
    if status == 503:
        return ServiceUnavailable(
            message, retry_after=retry_after_seconds(_header(headers, "Retry-After")), **kwargs
        )
    cls = _CLASSES.get(status) or (ServerError if status >= 500 else MedeventsError)
    return cls(message, **kwargs)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` in seconds: its delay-seconds form, or an HTTP date (seconds until then);
    None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if seconds >= 0 else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None

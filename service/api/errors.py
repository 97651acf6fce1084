"""Errors of the request itself, each rendered by the error middleware in the envelope."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ApiError(Exception):
    """An error with its HTTP status, its `error.type` and a message for the client."""

    status: int = 500
    error_type: str = "internal_error"

    def __init__(
        self,
        message: str,
        headers: dict[str, str] | None = None,
        invalid: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.invalid = invalid


class Unauthorized(ApiError):
    status = 401
    error_type = "access_denied"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="medevents"'})


class Forbidden(ApiError):
    status = 403
    error_type = "forbidden"


class NotFound(ApiError):
    status = 404
    error_type = "not_found"


class Conflict(ApiError):
    status = 409
    error_type = "request_conflict"


class RequestValidationFailed(ApiError):
    """The request body itself is unusable (not a JSON object); `invalid` says where."""

    status = 422
    error_type = "validation_failed"


class RequestTooLarge(ApiError):
    status = 413
    error_type = "request_entity_too_large"


class ServiceUnavailable(ApiError):
    status = 503
    error_type = "service_unavailable"


# `error.type` for the errors aiohttp raises itself (no route, wrong method, body too large).
_TYPES_BY_STATUS = {
    400: "bad_request",
    401: "access_denied",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "request_conflict",
    413: "request_entity_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    500: "internal_error",
    503: "service_unavailable",
}


def error_type_for(status: int) -> str:
    if status in _TYPES_BY_STATUS:
        return _TYPES_BY_STATUS[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"

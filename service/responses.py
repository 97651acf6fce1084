"""JSON responses encoded with orjson, and the error envelope as a response."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from schemas.envelope import Meta, dump_error


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    request_url: str,
    request_id: str,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    invalid: list[dict[str, Any]] | None = None,
) -> web.Response:
    body = dump_error(Meta(status, request_url, request_id), error_type, message, invalid)
    return json_response(body, status, headers)

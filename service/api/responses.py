"""JSON responses encoded with orjson, and the error envelope as a response."""

from __future__ import annotations

import hashlib
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


def envelope(data: Any, status: int, url: str, request_id: str) -> dict[str, Any]:
    """`schemas.envelope.dump_envelope(data, Meta(status, url, request_id))`, made directly:
    `MetaSchema` dumps its three values and a constant to this dict, and costs ten times
    as much as making it (tests/integration/test_poll_from_memory.py checks they agree)."""
    return {
        "data": data,
        "meta": {"code": status, "url": url, "type": "object", "request_id": request_id},
    }


def entity_tag(data: Any) -> str:
    """A weak ETag of what a response says (`data`), not of its `meta`, which names the
    request: the same state polled twice has the same tag, though not the same bytes."""
    return 'W/"' + hashlib.blake2b(orjson.dumps(data), digest_size=16).hexdigest() + '"'


def conditional_json_response(
    request: web.Request, body: dict[str, Any], status: int = 200, tag: str | None = None
) -> web.Response:
    """`json_response` with an ETag (of `body["data"]`, unless the caller has it already);
    304 without a body when `If-None-Match` names it and the answer would be a 2xx (RFC 9110:
    a 303 stays a 303)."""
    tag = tag or entity_tag(body["data"])
    if (
        200 <= status < 300
        and "If-None-Match" in request.headers
        and _matches(request.headers.getall("If-None-Match"), tag)
    ):
        return web.Response(status=304, headers={"ETag": tag})
    return json_response(body, status, headers={"ETag": tag})


def _matches(if_none_match: list[str], tag: str) -> bool:
    candidates = {c.strip() for header in if_none_match for c in header.split(",")}
    # Weak comparison, as RFC 9110 asks for If-None-Match: W/"x" matches "x".
    opaque = tag.removeprefix("W/")
    return "*" in candidates or opaque in {c.removeprefix("W/") for c in candidates}


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

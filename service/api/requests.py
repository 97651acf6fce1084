"""What handlers read of a request: its JSON body, the UUIDs in its path."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from schemas.validation import json_object
from service.api.errors import NotFound, RequestValidationFailed
from service.usecases.cpu_bound import sized_work


async def read_json_object(request: web.Request) -> dict[str, Any]:
    body = await request.read()  # bounded: 413 past MAX_REQUEST_BYTES
    data, invalid = await sized_work(len(body), json_object, body)
    if data is None or invalid is not None:
        raise RequestValidationFailed("The body is not a usable JSON object", invalid=invalid)
    return data


def patient_id_of(request: web.Request) -> str:
    return canonical_uuid(request.match_info["patient_id"], "Patient not found")


def canonical_uuid(text: str, not_found: str) -> str:
    """The canonical form of a UUID in a path; anything else names nothing there is."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound(not_found) from None

"""A client's webhook endpoints (scope `webhook:write`), thin over `WebhookService`: only the
caller's own endpoints exist for it (another client's answers 404)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from schemas.envelope import Meta
from schemas.rules import Rule
from schemas.validation import invalid_entries, single_entry
from schemas.webhooks import (
    CREATE_WEBHOOK,
    DELIVERIES_PAGE,
    DELIVERIES_QUERY,
    WEBHOOK_ENDPOINT,
    WEBHOOK_ENDPOINT_WITH_SECRET,
    WEBHOOK_LIST,
)
from service.api.errors import Conflict, NotFound, RequestValidationFailed
from service.api.keys import REQUEST_ID, REQUEST_URL, SERVICES, principal_of
from service.api.middlewares import requires_scope
from service.api.requests import canonical_uuid, read_json_object
from service.api.responses import json_response
from service.usecases.webhooks import (
    EndpointNotFound,
    TooManyEndpoints,
    UrlRefused,
    WebhookService,
)

WEBHOOK_SCOPE = "webhook:write"
NOT_FOUND = "Webhook endpoint not found"


def _service(request: web.Request) -> WebhookService:
    return request.app[SERVICES].webhook_service


def _meta(request: web.Request, code: int = 200) -> Meta:
    return Meta(code, request[REQUEST_URL], request[REQUEST_ID])


def _load(schema: Schema, values: Any) -> dict[str, Any]:
    try:
        return schema.load(values)
    except ValidationError as exc:
        invalid = invalid_entries(exc.messages, [])
        raise RequestValidationFailed("The request is not usable", invalid=invalid) from None


def _endpoint_id(request: web.Request) -> str:
    return canonical_uuid(request.match_info["endpoint_id"], NOT_FOUND)


@requires_scope(WEBHOOK_SCOPE)
async def create_webhook(request: web.Request) -> web.Response:
    """`POST /api/webhooks`: 201 with the endpoint and its secret, shown only here."""
    asked = _load(CREATE_WEBHOOK, await read_json_object(request))
    client_id = principal_of(request).client_id
    try:
        endpoint = await _service(request).create(client_id, asked["url"], asked["events"])
    except UrlRefused as refused:
        invalid = single_entry(["url"], Rule("format", str(refused)))
        raise RequestValidationFailed("The URL is not allowed", invalid=invalid) from None
    except TooManyEndpoints as exc:
        raise Conflict(str(exc)) from None
    body = WEBHOOK_ENDPOINT_WITH_SECRET.dump({"data": endpoint, "meta": _meta(request, 201)})
    location = f"/api/webhooks/{endpoint['_id']}"
    return json_response(body, status=201, headers={"Location": location})


@requires_scope(WEBHOOK_SCOPE)
async def list_webhooks(request: web.Request) -> web.Response:
    """`GET /api/webhooks`: the caller's endpoints, newest first, without their secrets."""
    endpoints = await _service(request).list(principal_of(request).client_id)
    return json_response(WEBHOOK_LIST.dump({"data": endpoints, "meta": _meta(request)}))


@requires_scope(WEBHOOK_SCOPE)
async def get_webhook(request: web.Request) -> web.Response:
    try:
        endpoint = await _service(request).get(
            _endpoint_id(request), principal_of(request).client_id
        )
    except EndpointNotFound:
        raise NotFound(NOT_FOUND) from None
    return json_response(WEBHOOK_ENDPOINT.dump({"data": endpoint, "meta": _meta(request)}))


@requires_scope(WEBHOOK_SCOPE)
async def delete_webhook(request: web.Request) -> web.Response:
    """204; the events already queued for it are dropped at their delivery."""
    try:
        await _service(request).delete(_endpoint_id(request), principal_of(request).client_id)
    except EndpointNotFound:
        raise NotFound(NOT_FOUND) from None
    return web.Response(status=204)


@requires_scope(WEBHOOK_SCOPE)
async def rotate_secret(request: web.Request) -> web.Response:
    """`POST /api/webhooks/{id}/actions/rotate-secret`: a new secret, shown once; the previous
    one keeps signing beside it for WEBHOOK_SECRET_OVERLAP_SECONDS."""
    try:
        endpoint = await _service(request).rotate_secret(
            _endpoint_id(request), principal_of(request).client_id
        )
    except EndpointNotFound:
        raise NotFound(NOT_FOUND) from None
    body = WEBHOOK_ENDPOINT_WITH_SECRET.dump({"data": endpoint, "meta": _meta(request)})
    return json_response(body)


@requires_scope(WEBHOOK_SCOPE)
async def list_deliveries(request: web.Request) -> web.Response:
    """`GET /api/webhooks/{id}/deliveries`: its attempts, newest first, a page at a time."""
    endpoint_id = _endpoint_id(request)
    asked = _load(DELIVERIES_QUERY, dict(request.query))
    try:
        attempts, next_token = await _service(request).deliveries(
            endpoint_id, principal_of(request).client_id, asked.get("page_token"), asked["limit"]
        )
    except EndpointNotFound:
        raise NotFound(NOT_FOUND) from None
    body = DELIVERIES_PAGE.dump(
        {
            "data": attempts,
            "paging": {"limit": asked["limit"], "next_page_token": next_token},
            "meta": _meta(request),
        }
    )
    return json_response(body)

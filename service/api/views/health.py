"""Health, readiness, metrics and the OpenAPI document: what operators and tools read."""

from __future__ import annotations

from aiohttp import web

from schemas.health import dump_health
from service.api.keys import JOB_SERVICE, OPENAPI_DOCUMENT, REQUEST_ID, REQUEST_URL
from service.api.responses import json_response
from service.observability.metrics import QUEUE_DEPTH, exposition


async def live(request: web.Request) -> web.Response:
    """The process serves requests; nothing else is asked."""
    status, body = dump_health(None, request[REQUEST_URL], request[REQUEST_ID])
    return json_response(body, status)


async def ready(request: web.Request) -> web.Response:
    """MongoDB answers a ping and the broker would take a message: else 503."""
    checks = await request.app[JOB_SERVICE].readiness()
    status, body = dump_health(checks, request[REQUEST_URL], request[REQUEST_ID])
    return json_response(body, status)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document, generated from the schemas and the job types once per process."""
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process; the queue depth is read from the broker now."""
    depth = await request.app[JOB_SERVICE].queue_depth()
    if depth is not None:
        QUEUE_DEPTH.set(depth)
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})

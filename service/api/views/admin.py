"""The operators' endpoints and the dashboard page. Every JSON endpoint needs `jobs:admin`;
the page itself holds no data (it asks for a token and reads the endpoints with it)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from schemas.admin import (
    ADMIN_JOB,
    ADMIN_JOB_PAGE,
    ADMIN_JOBS_QUERY,
    REPLAY_REQUEST,
    REPLAYED,
    STATS,
)
from schemas.envelope import Meta
from schemas.validation import invalid_entries
from schemas.webhooks import WEBHOOK_DEAD_LETTERS, WEBHOOK_REPLAY_REQUEST, WEBHOOK_REPLAYED
from service.api.errors import NotFound, RequestValidationFailed
from service.api.keys import OPERATOR_SERVICE, REQUEST_ID, REQUEST_URL, SERVICES
from service.api.middlewares import requires_scope
from service.api.requests import read_json_object
from service.api.responses import json_response
from service.domain.jobs import JobQuery, JobStatus
from service.messaging.broker import BrokerUnavailable
from service.usecases.jobs import JobNotFound

ADMIN_SCOPE = "jobs:admin"
DASHBOARD = resources.files("service.api") / "dashboard"
STATUS_BY_LABEL = {status.label: status for status in JobStatus}


def _meta(request: web.Request) -> Meta:
    return Meta(200, request[REQUEST_URL], request[REQUEST_ID])


def _load(schema: Schema, values: Any, root: list[str | int]) -> dict[str, Any]:
    try:
        return schema.load(values)
    except ValidationError as exc:
        invalid = invalid_entries(exc.messages, root)
        raise RequestValidationFailed("The request is not usable", invalid=invalid) from None


@requires_scope(ADMIN_SCOPE)
async def list_jobs(request: web.Request) -> web.Response:
    """`GET /api/admin/jobs`: newest first (or `order=oldest`), filtered, a page at a time."""
    params = _load(ADMIN_JOBS_QUERY, dict(request.query), [])
    query = JobQuery(
        status=STATUS_BY_LABEL[params["status"]] if "status" in params else None,
        type=params.get("type"),
        client_id=params.get("client_id"),
        since=params.get("since"),
        after=params.get("cursor"),
        oldest_first=params["order"] == "oldest",
        limit=params["limit"],
    )
    jobs, next_cursor = await request.app[OPERATOR_SERVICE].jobs_page(query)
    body = ADMIN_JOB_PAGE.dump(
        {
            "data": jobs,
            "paging": {"limit": query.limit, "next_cursor": next_cursor},
            "meta": _meta(request),
        }
    )
    return json_response(body)


@requires_scope(ADMIN_SCOPE)
async def get_job(request: web.Request) -> web.Response:
    """`GET /api/admin/jobs/{job_id}`: any client's job."""
    try:
        job = await request.app[OPERATOR_SERVICE].job(request.match_info["job_id"])
    except JobNotFound:
        raise NotFound("Job not found") from None
    return json_response(ADMIN_JOB.dump({"data": job, "meta": _meta(request)}))


@requires_scope(ADMIN_SCOPE)
async def stats(request: web.Request) -> web.Response:
    """`GET /api/admin/stats`: pending now, finished by outcome, processing times, queues."""
    data = await request.app[OPERATOR_SERVICE].stats()
    return json_response(STATS.dump({"data": data, "meta": _meta(request)}))


@requires_scope(ADMIN_SCOPE)
async def replay_dead_letters(request: web.Request) -> web.Response:
    """`POST /api/admin/dead-letters/replay`: all, `{"job_ids": [...]}` or `{"limit": N}`."""
    values = await read_json_object(request) if request.can_read_body else {}
    asked = _load(REPLAY_REQUEST, values, [])
    dead_letters = request.app[OPERATOR_SERVICE].dead_letters
    replayed = await dead_letters.replay(asked.get("job_ids"), asked.get("limit"))
    remaining = await dead_letters.count_if_known()
    body = REPLAYED.dump(
        {"data": {"replayed": replayed, "dead_letters": remaining}, "meta": _meta(request)}
    )
    return json_response(body)


@requires_scope(ADMIN_SCOPE)
async def webhook_dead_letters(request: web.Request) -> web.Response:
    """`GET /api/admin/webhooks/dead-letters`: the webhooks set aside (schedule exhausted, or
    an address refused); None when the broker cannot be asked."""
    try:
        count: int | None = await request.app[SERVICES].webhook_dead_letters.count()
    except BrokerUnavailable:
        count = None
    body = WEBHOOK_DEAD_LETTERS.dump({"data": {"dead_letters": count}, "meta": _meta(request)})
    return json_response(body)


@requires_scope(ADMIN_SCOPE)
async def replay_webhook_dead_letters(request: web.Request) -> web.Response:
    """`POST /api/admin/webhooks/dead-letters/replay`: all, or `{"limit": N}` (oldest first),
    back to the delivery queue as first attempts, with the retry schedule from its start."""
    values = await read_json_object(request) if request.can_read_body else {}
    asked = _load(WEBHOOK_REPLAY_REQUEST, values, [])
    dead_letters = request.app[SERVICES].webhook_dead_letters
    replayed = await dead_letters.replay(asked.get("limit"))
    try:
        remaining: int | None = await dead_letters.count()
    except BrokerUnavailable:
        remaining = None
    body = WEBHOOK_REPLAYED.dump(
        {"data": {"replayed": replayed, "dead_letters": remaining}, "meta": _meta(request)}
    )
    return json_response(body)


async def dashboard(request: web.Request) -> web.Response:
    """The page; its script and style are served from the package too (no CDN)."""
    return web.Response(
        body=(DASHBOARD / "index.html").read_bytes(),
        content_type="text/html",
        headers=_PAGE_HEADERS,
    )


async def dashboard_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kinds = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
    if name not in kinds:
        raise NotFound("No such file")
    return web.Response(
        body=(DASHBOARD / name).read_bytes(), content_type=kinds[name], headers=_PAGE_HEADERS
    )


# The page runs only its own script, talks only to this API, and is never framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.api.auth import build_authenticator
from service.api.errors import ApiError
from service.api.keys import (
    AUTHENTICATOR,
    ENTITY_READS,
    ENTITY_STORE,
    JOB_SERVICE,
    OPENAPI_DOCUMENT,
    OPERATOR_SERVICE,
    SERVICES,
    SETTINGS,
)
from service.api.middlewares import MIDDLEWARES
from service.api.openapi import openapi_document
from service.api.routes import setup_routes
from service.bootstrap import Services
from service.config import Settings
from service.messaging.broker import BrokerUnavailable
from service.usecases.finished_jobs import FinishedJobs

log = structlog.get_logger("medevents.app")


def create_app(services: Services) -> web.Application:
    """The API over what `services` built; the app closes them at its cleanup.

    `services.settings.mongodb_url` must be set (the bootstrap says so when it is not): the CLI
    starts the embedded server first when the environment names none. The routes of
    submissions and their OpenAPI operations come from the job types of `services.registry`.
    """
    settings = services.settings
    app = web.Application(
        middlewares=(*MIDDLEWARES, body_deadline), client_max_size=settings.max_request_bytes
    )
    app[SERVICES] = services
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = build_authenticator(settings)
    app[OPENAPI_DOCUMENT] = openapi_document(services.registry)
    app[JOB_SERVICE] = services.job_service
    services.job_service.finished_jobs = FinishedJobs(settings.finished_job_cache_bytes)
    app[OPERATOR_SERVICE] = services.operator_service
    app[ENTITY_STORE] = services.entities
    app[ENTITY_READS] = services.entity_reads
    app.cleanup_ctx.append(lifetime)
    setup_routes(app, services.registry)
    return app


async def lifetime(app: web.Application) -> AsyncIterator[None]:
    """What the API needs running while it serves. It serves even while MongoDB or the broker
    is down: requests answer 503 until they are back."""
    services = app[SERVICES]
    try:
        await services.prepare_storage()
        try:  # the publisher connects now if it can, else at its first use
            await services.publisher.connect()
        except BrokerUnavailable:
            log.warning("broker_unavailable_at_start")
        await services.job_events.start()  # the long polls' wake-up calls
        yield
    finally:
        await services.aclose()


def server_options(settings: Settings) -> dict[str, Any]:
    """How the HTTP server treats slow clients (`web.run_app` / `web.AppRunner` options).

    - The request's head: aiohttp closes a connection that has no complete request head
      `keepalive_timeout` seconds after it opened or after its previous response (its
      keep-alive timer is armed then and is not pushed back by bytes arriving), so a client
      dribbling its headers is cut off after `HTTP_HEADER_TIMEOUT_SECONDS`; an idle kept-alive
      connection is closed after as long. A request being answered (a long poll) is not cut.
    - The body: `body_deadline` (a middleware) answers 408 when a body the handler reads is not
      whole within `HTTP_BODY_TIMEOUT_SECONDS`; a body no handler reads (the request was
      refused first) is read and dropped for at most `lingering_time`, then the connection is
      closed.
    """
    return {
        "keepalive_timeout": float(settings.http_header_timeout_seconds),
        "lingering_time": float(min(settings.http_body_timeout_seconds, 10)),
    }


class BodyTimedOut(ApiError, TimeoutError):
    """The request's body did not arrive whole in time. Also a `TimeoutError`, so that aiohttp,
    finding it while it drops the rest of the body after the answer, closes the connection
    quietly."""

    status = 408
    error_type = "request_timeout"


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body still arriving `HTTP_BODY_TIMEOUT_SECONDS` after the handler began makes its
    read fail with `BodyTimedOut` (408 in the error envelope; the connection is then closed)."""
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    seconds = request.app[SETTINGS].http_body_timeout_seconds
    content = request.content

    def expire() -> None:
        if not content.is_eof():
            message = f"The request body was not received within {seconds} s"
            content.set_exception(BodyTimedOut(message, headers={"Connection": "close"}))

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await handler(request)
    finally:
        timer.cancel()

"""The aiohttp application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.api.auth import build_authenticator
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
from service.messaging.broker import BrokerUnavailable

log = structlog.get_logger("medevents.app")


def create_app(services: Services) -> web.Application:
    """The API over what `services` built; the app closes them at its cleanup.

    `services.settings.mongodb_url` must be set (the bootstrap says so when it is not): the CLI
    starts the embedded server first when the environment names none. The routes of
    submissions and their OpenAPI operations come from the job types of `services.registry`.
    """
    settings = services.settings
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_request_bytes)
    app[SERVICES] = services
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = build_authenticator(settings)
    app[OPENAPI_DOCUMENT] = openapi_document(services.registry)
    app[JOB_SERVICE] = services.job_service
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

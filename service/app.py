"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.auth import build_authenticator
from service.config import Settings
from service.job_service import JobService
from service.keys import AUTHENTICATOR, JOB_SERVICE, SETTINGS
from service.middlewares import MIDDLEWARES
from service.routes import setup_routes
from service.store import JobStore, StoreUnavailable, open_mongo_client

log = structlog.get_logger("medevents.app")

INDEX_RETRY_SECONDS = 5.0


def create_app(settings: Settings) -> web.Application:
    """The API. `settings.mongodb_url` must be set: the CLI starts the embedded server first
    when the environment names none."""
    if not settings.mongodb_url:
        raise ValueError("create_app needs settings.mongodb_url")
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = build_authenticator(settings)
    app.cleanup_ctx.append(mongodb)
    setup_routes(app)
    return app


async def mongodb(app: web.Application) -> AsyncIterator[None]:
    """The MongoDB client for the app's lifetime, and the indexes the store needs."""
    settings = app[SETTINGS]
    client = open_mongo_client(settings, settings.mongodb_url)
    store = JobStore(client[settings.mongodb_db])
    app[JOB_SERVICE] = JobService(store)
    index_task = None
    try:
        await store.ensure_indexes()
    except StoreUnavailable:
        # Serve anyway (polls answer 503 until MongoDB is back) and create them when it is.
        log.warning("mongodb_unavailable_at_start", retry_in_s=INDEX_RETRY_SECONDS)
        index_task = asyncio.create_task(_ensure_indexes_eventually(store))
    yield
    if index_task is not None:
        index_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await index_task
    await client.close()


async def _ensure_indexes_eventually(store: JobStore) -> None:
    while True:
        await asyncio.sleep(INDEX_RETRY_SECONDS)
        try:
            await store.ensure_indexes()
        except StoreUnavailable:
            continue
        log.info("mongodb_indexes_created")
        return

"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.auth import build_authenticator
from service.broker import BrokerUnavailable, SubmissionPublisher, Topology
from service.config import Settings
from service.entity_store import EntityStore, PatientStore
from service.job_service import JobService
from service.keys import (
    AUTHENTICATOR,
    ENTITY_STORE,
    JOB_SERVICE,
    JOB_STORE,
    PATIENT_STORE,
    SETTINGS,
    TOPOLOGY,
)
from service.middlewares import MIDDLEWARES
from service.routes import setup_routes
from service.store import JobStore, StoreUnavailable, open_mongo_client

log = structlog.get_logger("medevents.app")

INDEX_RETRY_SECONDS = 5.0


def create_app(settings: Settings, *, with_consumer: bool = False) -> web.Application:
    """The API; with `with_consumer`, the RabbitMQ consumer runs in the same process.

    `settings.mongodb_url` must be set: the CLI starts the embedded server first when the
    environment names none.
    """
    if not settings.mongodb_url:
        raise ValueError("create_app needs settings.mongodb_url")
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[TOPOLOGY] = Topology(settings.amqp_prefix)
    app[AUTHENTICATOR] = build_authenticator(settings)
    app.cleanup_ctx.append(mongodb)
    app.cleanup_ctx.append(publisher)
    if with_consumer:
        app.cleanup_ctx.append(consumer)
    setup_routes(app)
    return app


async def mongodb(app: web.Application) -> AsyncIterator[None]:
    """The MongoDB client for the app's lifetime, its stores, and the indexes they need."""
    settings = app[SETTINGS]
    client = open_mongo_client(settings, settings.mongodb_url)
    try:
        db = client[settings.mongodb_db]
        app[JOB_STORE] = JobStore(db)
        app[ENTITY_STORE] = EntityStore(db)
        app[PATIENT_STORE] = PatientStore(db)
        index_task = None
        try:
            await ensure_indexes(app[JOB_STORE], app[ENTITY_STORE])
        except StoreUnavailable:
            # Serve anyway (requests answer 503 until MongoDB is back), index when it is.
            log.warning("mongodb_unavailable_at_start", retry_in_s=INDEX_RETRY_SECONDS)
            index_task = asyncio.create_task(
                _ensure_indexes_eventually(app[JOB_STORE], app[ENTITY_STORE])
            )
        yield
        if index_task is not None:
            index_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await index_task
    finally:
        await client.close()


async def ensure_indexes(jobs: JobStore, entities: EntityStore) -> None:
    await jobs.ensure_indexes()
    await entities.ensure_indexes()


async def _ensure_indexes_eventually(jobs: JobStore, entities: EntityStore) -> None:
    while True:
        await asyncio.sleep(INDEX_RETRY_SECONDS)
        try:
            await ensure_indexes(jobs, entities)
        except StoreUnavailable:
            continue
        log.info("mongodb_indexes_created")
        return


async def publisher(app: web.Application) -> AsyncIterator[None]:
    """The publisher of HTTP submissions. It connects now if it can, else at first use."""
    settings = app[SETTINGS]
    submissions = SubmissionPublisher(settings.amqp_url, app[TOPOLOGY])
    try:
        await submissions.connect()
    except BrokerUnavailable:
        log.warning("broker_unavailable_at_start")
    app[JOB_SERVICE] = JobService(app[JOB_STORE], submissions)
    yield
    await submissions.close()


async def consumer(app: web.Application) -> AsyncIterator[None]:
    """The consumer, for `medevents run`. It starts in the background (it waits for the
    broker when that is down) and stops before the MongoDB client closes."""
    from consumers.consumer import JobConsumer
    from consumers.processing import SubmissionProcessor
    from consumers.registry import builtin_registry

    settings = app[SETTINGS]
    processor = SubmissionProcessor(
        app[JOB_STORE], app[ENTITY_STORE], app[PATIENT_STORE], builtin_registry()
    )
    jobs_consumer = JobConsumer(
        settings.amqp_url, processor, prefetch=settings.consumer_prefetch, topology=app[TOPOLOGY]
    )
    starting = asyncio.create_task(jobs_consumer.start())
    yield
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    await jobs_consumer.stop()

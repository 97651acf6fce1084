"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.api.auth import build_authenticator
from service.api.keys import (
    AUTHENTICATOR,
    ENTITY_STORE,
    JOB_EVENTS,
    JOB_SERVICE,
    JOB_STORE,
    OPENAPI_DOCUMENT,
    OPERATOR_SERVICE,
    PATIENT_STORE,
    SETTINGS,
    TOPOLOGY,
)
from service.api.middlewares import MIDDLEWARES
from service.api.openapi import openapi_document
from service.api.routes import setup_routes
from service.config import Settings
from service.domain.eta import ConsumerStats, EtaEstimator
from service.messaging.broker import BrokerUnavailable, SubmissionPublisher, Topology
from service.messaging.job_events import JobEvents
from service.storage.entities import EntityStore, PatientStore
from service.storage.indexes import ensure_indexes_or_later, stop_trying
from service.storage.jobs import JobStore, open_mongo_client
from service.storage.outcome_stats import OutcomeStats
from service.usecases.jobs import JobService
from service.usecases.operations import OperatorService
from service.usecases.retention import RetentionSweeper

log = structlog.get_logger("medevents.app")


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
    app[OPENAPI_DOCUMENT] = openapi_document()
    app.cleanup_ctx.append(mongodb)
    app.cleanup_ctx.append(publisher)
    app.cleanup_ctx.append(job_events)
    if with_consumer:
        app.cleanup_ctx.append(consumer)
    setup_routes(app)
    return app


async def mongodb(app: web.Application) -> AsyncIterator[None]:
    """The MongoDB client for the app's lifetime, its stores, and the indexes they need.
    The app serves even while MongoDB is down: requests answer 503 until it is back."""
    settings = app[SETTINGS]
    client = open_mongo_client(settings, settings.mongodb_url)
    try:
        db = client[settings.mongodb_db]
        app[JOB_STORE] = JobStore(db)
        app[ENTITY_STORE] = EntityStore(db)
        app[PATIENT_STORE] = PatientStore(db)
        indexing = await ensure_indexes_or_later(app[JOB_STORE], app[ENTITY_STORE])
        yield
        await stop_trying(indexing)
    finally:
        await client.close()


async def publisher(app: web.Application) -> AsyncIterator[None]:
    """The publisher of HTTP submissions. It connects now if it can, else at first use."""
    settings = app[SETTINGS]
    submissions = SubmissionPublisher(settings.amqp_url, app[TOPOLOGY])
    try:
        await submissions.connect()
    except BrokerUnavailable:
        log.warning("broker_unavailable_at_start")
    estimator = EtaEstimator(ConsumerStats(app[JOB_STORE].database), submissions.queue_depth)
    app[JOB_SERVICE] = JobService(app[JOB_STORE], submissions, estimator)
    app[OPERATOR_SERVICE] = OperatorService(
        app[JOB_STORE],
        OutcomeStats(app[JOB_STORE].database),
        submissions,
        settings.amqp_url,
        app[TOPOLOGY],
    )
    yield
    await submissions.close()


async def job_events(app: web.Application) -> AsyncIterator[None]:
    """The subscription to job-finished events that wakes long polls."""
    events = JobEvents(app[SETTINGS].amqp_url, app[TOPOLOGY])
    await events.start()
    app[JOB_EVENTS] = events
    yield
    await events.close()


async def consumer(app: web.Application) -> AsyncIterator[None]:
    """The consumer, for `medevents run`. It starts in the background (it waits for the
    broker when that is down) and stops before the MongoDB client closes. A consumer that
    cannot start stops the whole process: an API taking submissions that nothing processes
    would only pile them up."""
    from consumers.worker import build_consumer

    settings = app[SETTINGS]
    jobs_consumer = build_consumer(
        settings,
        app[JOB_STORE],
        app[ENTITY_STORE],
        app[PATIENT_STORE],
        app[TOPOLOGY],
        ConsumerStats(app[JOB_STORE].database),
    )
    sweeper = RetentionSweeper(
        app[JOB_STORE], settings.job_ttl_days, OutcomeStats(app[JOB_STORE].database)
    )
    sweeper.start()
    starting = asyncio.create_task(jobs_consumer.start())
    starting.add_done_callback(_stop_process_if_failed)
    yield
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    await jobs_consumer.stop()
    await sweeper.stop()


def _stop_process_if_failed(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("consumer_failed_to_start", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)

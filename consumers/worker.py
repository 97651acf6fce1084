"""`medevents consumer`: the consumer alone, until SIGTERM or SIGINT; and the one place a
consumer is put together, for this command and for `medevents run`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal

import structlog
from prometheus_client import start_http_server

from consumers.consumer import JobConsumer
from service.config import Settings
from service.domain.eta import ConsumerStats, EtaEstimator
from service.messaging.broker import Topology
from service.observability.metrics import QUEUE_DEPTH
from service.storage.entities import EntityStore, PatientStore
from service.storage.indexes import ensure_indexes_or_later, stop_trying
from service.storage.jobs import JobStore, open_mongo_client
from service.storage.outcome_stats import OutcomeRecorder, OutcomeStats
from service.usecases.job_types import builtin_registry
from service.usecases.processing import SubmissionProcessor
from service.usecases.retention import RetentionSweeper

log = structlog.get_logger("medevents.worker")


def build_consumer(
    settings: Settings,
    jobs: JobStore,
    entities: EntityStore,
    patients: PatientStore,
    topology: Topology,
    stats: ConsumerStats,
) -> JobConsumer:
    processor = SubmissionProcessor(jobs, entities, patients, builtin_registry())
    processor.outcomes = OutcomeRecorder(jobs.database)
    consumer = JobConsumer(
        settings.amqp_url,
        processor,
        prefetch=settings.consumer_prefetch,
        topology=topology,
        stats=stats,
    )
    # Jobs a producer published straight to the broker get their ETA here.
    processor.estimate_eta = functools.partial(
        EtaEstimator(stats, consumer.queue_depth).eta, in_progress=True
    )
    return consumer


async def run_consumer(settings: Settings) -> None:
    assert settings.mongodb_url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    client = open_mongo_client(settings, settings.mongodb_url)
    db = client[settings.mongodb_db]
    jobs, entities = JobStore(db), EntityStore(db)
    try:
        # Messages wait while MongoDB is down; the indexes are made as soon as it is up.
        indexing = await ensure_indexes_or_later(jobs, entities)
        consumer = build_consumer(
            settings,
            jobs,
            entities,
            PatientStore(db),
            Topology(settings.amqp_prefix),
            ConsumerStats(db),
        )
        sweeper = RetentionSweeper(jobs, settings.job_ttl_days, OutcomeStats(db))
        sweeper.start()
        serve_metrics(settings)
        depth = asyncio.create_task(_track_queue_depth(consumer, stop))
        starting = asyncio.create_task(consumer.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
        else:
            starting.result()
            await stopping
        log.info("consumer_stopping")
        stop.set()
        await depth
        await consumer.stop()
        await sweeper.stop()
        await stop_trying(indexing)
    finally:
        await client.close()


QUEUE_DEPTH_EVERY_SECONDS = 15.0


def serve_metrics(settings: Settings) -> None:
    """`/metrics` of a consumer running alone, on `METRICS_PORT` (0: none)."""
    if not settings.metrics_port:
        return
    try:
        start_http_server(settings.metrics_port, addr=settings.http_host)
    except OSError as exc:  # another consumer on this host has the port: run without
        log.warning("metrics_port_unavailable", port=settings.metrics_port, error=str(exc))
        return
    log.info("metrics_serving", url=f"http://{settings.http_host}:{settings.metrics_port}/metrics")


async def _track_queue_depth(consumer: JobConsumer, stop: asyncio.Event) -> None:
    while not stop.is_set():
        depth = await consumer.queue_depth()
        if depth is not None:
            QUEUE_DEPTH.set(depth)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUEUE_DEPTH_EVERY_SECONDS):
                await stop.wait()

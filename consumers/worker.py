"""`medevents consumer`: the consumer alone, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog

from consumers.consumer import JobConsumer
from consumers.processing import SubmissionProcessor
from consumers.registry import builtin_registry
from service.broker import Topology
from service.config import Settings
from service.entity_store import EntityStore, PatientStore
from service.store import JobStore, StoreUnavailable, open_mongo_client

log = structlog.get_logger("medevents.worker")


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
        try:
            await jobs.ensure_indexes()
            await entities.ensure_indexes()
        except StoreUnavailable:
            log.warning("mongodb_unavailable_at_start")  # messages wait until it is back
        processor = SubmissionProcessor(jobs, entities, PatientStore(db), builtin_registry())
        consumer = JobConsumer(
            settings.amqp_url,
            processor,
            prefetch=settings.consumer_prefetch,
            topology=Topology(settings.amqp_prefix),
        )
        starting = asyncio.create_task(consumer.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
        else:
            starting.result()
            await stopping
        log.info("consumer_stopping")
        await consumer.stop()
    finally:
        await client.close()

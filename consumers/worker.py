"""The consumer's process: `medevents consumer` (the consumer alone, until SIGTERM or SIGINT,
with `/metrics` and `/health/live` on METRICS_PORT) and the consumer beside the API in
`medevents run`. Both take what the bootstrap built."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import structlog

from consumers.consumer import JobConsumer
from service.bootstrap import Services
from service.observability.metrics import QUEUE_DEPTH
from service.usecases.running import pause, stop_on_signals

log = structlog.get_logger("medevents.worker")
# `medevents run` says that its consumer could not start as the app's own line.
app_log = structlog.get_logger("medevents.app")

QUEUE_DEPTH_EVERY_SECONDS = 15.0


def build_consumer(services: Services) -> JobConsumer:
    """The consumer over the bootstrap's queue and processor; `services.aclose()` stops it
    (before the stores it writes to close)."""
    consumer = JobConsumer(
        services.job_queue,
        services.processor,
        services.load_reporter,
        reconciler=services.reconciler,
        notifier=services.webhook_notifier,
    )
    services.on_close(consumer.stop)
    return consumer


async def run_consumer(services: Services, stop: asyncio.Event | None = None) -> None:
    """`medevents consumer`: consume until SIGTERM or SIGINT (or until `stop` is set, when
    given), then stop cleanly (messages in flight finish or go back to the queue) and close
    what the bootstrap opened."""
    stop = stop if stop is not None else stop_on_signals()
    async with services:
        await services.serve_probes()  # first: alive while MongoDB or the broker is not
        # Messages wait while MongoDB is down; the indexes are made as soon as it is up.
        await services.prepare_storage()
        services.start_retention()  # stopped after the consumer: closers run in reverse
        consumer = build_consumer(services)
        services.start_reconciler()  # stopped before the consumer: it sends on its connection
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


@contextlib.asynccontextmanager
async def consumer_in_background(services: Services) -> AsyncIterator[None]:
    """For `medevents run`, beside the API: the consumer starts in the background (it waits
    for the broker while that is down) and stops with `services`. A consumer that cannot
    start stops the whole process: an API taking submissions that nothing processes would
    only pile them up."""
    services.start_retention()  # stopped after the consumer: closers run in reverse
    consumer = build_consumer(services)
    services.start_reconciler()  # stopped before the consumer: it sends on its connection
    starting = asyncio.create_task(consumer.start())
    starting.add_done_callback(_stop_process_if_failed)

    async def stop_starting() -> None:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting

    services.on_close(stop_starting)  # closed first: before the consumer stops
    yield
    await services.aclose()


def _stop_process_if_failed(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is None:
        return
    app_log.error("consumer_failed_to_start", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


async def _track_queue_depth(consumer: JobConsumer, stop: asyncio.Event) -> None:
    while not stop.is_set():
        depth = await consumer.queue_depth()
        if depth is not None:
            QUEUE_DEPTH.set(depth)
        await pause(stop, QUEUE_DEPTH_EVERY_SECONDS)

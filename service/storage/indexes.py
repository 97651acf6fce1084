"""The indexes every store needs, created at start; when MongoDB is down then, created in the
background as soon as it answers, so that a process never runs without them for long."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable

log = structlog.get_logger("medevents.indexes")

RETRY_SECONDS = 5.0


async def ensure_indexes(jobs: JobStore, entities: EntityStore) -> None:
    await jobs.ensure_indexes()
    await entities.ensure_indexes()


async def ensure_indexes_or_later(jobs: JobStore, entities: EntityStore) -> asyncio.Task | None:
    """Create the indexes now if MongoDB answers; else a task that keeps trying (cancel it
    with `stop_trying`)."""
    try:
        await ensure_indexes(jobs, entities)
        return None
    except StoreUnavailable:
        log.warning("mongodb_unavailable_at_start", retry_in_s=RETRY_SECONDS)
        return asyncio.create_task(_keep_trying(jobs, entities))


async def stop_trying(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _keep_trying(jobs: JobStore, entities: EntityStore) -> None:
    while True:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            await ensure_indexes(jobs, entities)
        except StoreUnavailable:
            continue
        log.info("mongodb_indexes_created")
        return

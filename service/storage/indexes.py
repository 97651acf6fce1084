"""The indexes every store needs, created at start; when MongoDB is down then, created in the
background as soon as it answers, so that a process never runs without them for long."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from service.storage.mongo import StoreUnavailable

log = structlog.get_logger("medevents.indexes")

RETRY_SECONDS = 5.0


class IndexedStore(Protocol):
    """A store that declares its indexes (`JobStore`, `EntityStore`, `EntityReads`)."""

    async def ensure_indexes(self) -> None: ...


async def ensure_indexes(*stores: IndexedStore) -> None:
    for store in stores:
        await store.ensure_indexes()


async def ensure_indexes_or_later(*stores: IndexedStore) -> asyncio.Task | None:
    """Create the indexes of `stores` now if MongoDB answers; else a task that keeps trying
    (cancel it with `stop_trying`)."""
    try:
        await ensure_indexes(*stores)
        return None
    except StoreUnavailable:
        log.warning("mongodb_unavailable_at_start", retry_in_s=RETRY_SECONDS)
        return asyncio.create_task(_keep_trying(*stores))


async def stop_trying(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _keep_trying(*stores: IndexedStore) -> None:
    while True:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            await ensure_indexes(*stores)
        except StoreUnavailable:
            continue
        log.info("mongodb_indexes_created")
        return

"""The ETA of a new job, estimated from the load the consumers report (see `domain.eta`)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from service.domain.clock import utcnow
from service.domain.eta import DEFAULT_MEAN_SECONDS, REFRESH_SECONDS, Load
from service.storage.consumer_stats import ConsumerStats
from service.storage.mongo import StoreUnavailable


class EtaEstimator:
    def __init__(
        self, stats: ConsumerStats, queue_depth: Callable[[], Awaitable[int | None]]
    ) -> None:
        self._stats = stats
        self._queue_depth = queue_depth
        self._load = Load(0, DEFAULT_MEAN_SECONDS, 1)
        self._read_at = -math.inf

    async def eta(self, now: datetime | None = None, *, in_progress: bool = False) -> datetime:
        """The ETA of a job about to be queued; `in_progress` for one whose message is being
        processed already (the messages in the queue are then behind it, not ahead)."""
        now = now or utcnow()
        if time.monotonic() - self._read_at >= REFRESH_SECONDS:
            self._read_at = time.monotonic()
            try:
                self._load = await self._current_load(now)
            except StoreUnavailable:
                pass  # the last load it knew
        load = self._load
        if in_progress:
            load = Load(0, load.mean_seconds, load.parallelism)
        return load.eta(now)

    async def _current_load(self, now: datetime) -> Load:
        consumers = await self._stats.live(now)
        return Load.of(await self._queue_depth() or 0, consumers)

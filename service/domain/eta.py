"""A real `eta` for new jobs, and `Retry-After` for pending ones.

    eta = now + mean * (1 + ahead / parallelism)

- `mean`: a moving average (EWMA, weight 0.2 for the newest) of recent processing times
  (delivery to terminal), as each consumer reports it; averaged over the live consumers.
- `ahead`: the messages ready in the jobs queue, as the broker counts them.
- `parallelism`: the messages the live consumers work on at once (the sum of their prefetch).

A consumer reports every few seconds into the `consumers` collection; one that has not
reported for 30 s is not live. With no live consumer the estimate uses 1 s and a parallelism
of 1: the job waits until one starts, and the estimate cannot know when. The inputs are read
at most once a second per process, so the estimate adds nothing to most submissions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from service.storage.jobs import StoreUnavailable, unavailable_on_outage, utcnow

DEFAULT_MEAN_SECONDS = 1.0
LIVE_WITHIN = timedelta(seconds=30)
REFRESH_SECONDS = 1.0
EWMA_WEIGHT = 0.2
RETRY_AFTER_BOUNDS = (1, 30)


class MovingAverage:
    def __init__(self, weight: float = EWMA_WEIGHT) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = (
            sample
            if self.value is None
            else (self.weight * sample + (1 - self.weight) * self.value)
        )


class ConsumerStats:
    """`consumers`: `{_id: consumer id, mean_seconds, prefetch, updated_at}`."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._consumers = db["consumers"]

    @unavailable_on_outage
    async def report(self, consumer_id: str, mean_seconds: float, prefetch: int) -> None:
        await self._consumers.update_one(
            {"_id": consumer_id},
            {
                "$set": {"mean_seconds": mean_seconds, "prefetch": prefetch},
                "$currentDate": {"updated_at": True},
            },
            upsert=True,
        )

    @unavailable_on_outage
    async def live(self, now: datetime) -> list[dict[str, Any]]:
        cursor = self._consumers.find({"updated_at": {"$gt": now - LIVE_WITHIN}})
        return [consumer async for consumer in cursor]

    @unavailable_on_outage
    async def forget(self, consumer_id: str) -> None:
        await self._consumers.delete_one({"_id": consumer_id})


@dataclass(frozen=True, slots=True)
class Load:
    ahead: int
    mean_seconds: float
    parallelism: int

    def eta(self, now: datetime) -> datetime:
        seconds = self.mean_seconds * (1 + self.ahead / self.parallelism)
        return now + timedelta(seconds=seconds)


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
        ahead = await self._queue_depth() or 0
        if not consumers:
            return Load(ahead, DEFAULT_MEAN_SECONDS, 1)
        mean = sum(c["mean_seconds"] for c in consumers) / len(consumers)
        return Load(ahead, mean, max(1, sum(c["prefetch"] for c in consumers)))


def retry_after(eta: datetime, now: datetime | None = None) -> int:
    """Seconds until `eta`, within 1..30: when a polling client should look again."""
    low, high = RETRY_AFTER_BOUNDS
    seconds = math.ceil((eta - (now or utcnow())).total_seconds())
    return max(low, min(high, seconds))

"""What a consumer tells the rest of the service every few seconds: its recent processing time
and how many messages it takes at once (for the ETA of new jobs, `domain.eta`), and the jobs
it finished per minute (for the operators' dashboard)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

from service.domain.eta import DEFAULT_MEAN_SECONDS, MovingAverage
from service.storage.consumer_stats import ConsumerStats
from service.storage.mongo import StoreUnavailable
from service.storage.outcome_stats import OutcomeRecorder

REPORT_EVERY_SECONDS = 5.0


class LoadReporter:
    def __init__(
        self, stats: ConsumerStats, outcomes: OutcomeRecorder | None, prefetch: int
    ) -> None:
        self._stats = stats
        self.outcomes = outcomes
        self._prefetch = prefetch
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mean = MovingAverage()

    def processed_in(self, seconds: float) -> None:
        """A job finished after `seconds` of processing."""
        self._mean.add(seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        """Report until `stopping` is set (between reports, never inside one), then leave the
        live consumers: a stopped consumer takes nothing any more."""
        while not stopping.is_set():
            try:
                await self._stats.report(
                    self._id, self._mean.value or DEFAULT_MEAN_SECONDS, self._prefetch
                )
                if self.outcomes is not None:
                    await self.outcomes.flush()
            except StoreUnavailable:
                pass
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_EVERY_SECONDS):
                    await stopping.wait()
        with contextlib.suppress(StoreUnavailable):
            await self._stats.forget(self._id)

    async def flush_outcomes(self) -> None:
        """Write the counts not written yet (a stopping consumer's last jobs); an outage keeps
        them for a later flush, which a stopping consumer will not make."""
        if self.outcomes is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.outcomes.flush()

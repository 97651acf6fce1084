"""Retention: finished jobs are removed `JOB_TTL_DAYS` after they finished; pending jobs
never expire.

No TTL index: the embedded test server enforces TTL indexes by scanning on every read (about
35 times slower reads at 20,000 jobs), and a sweep every few minutes over the
`{status, updated_at}` index costs reads nothing. It runs in the consumer process; two
consumers sweeping at once only delete the same documents twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog

from service.domain.clock import utcnow
from service.domain.outcome_counts import KEPT_FOR as OUTCOME_MINUTES_KEPT_FOR
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.storage.outcome_stats import OutcomeStats

log = structlog.get_logger("medevents.retention")

SWEEP_INTERVAL_SECONDS = 300.0


class RetentionSweeper:
    def __init__(
        self,
        jobs: JobStore,
        ttl_days: int,
        outcome_stats: OutcomeStats | None = None,
        interval_seconds: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self._jobs = jobs
        self._outcome_stats = outcome_stats
        self._ttl = timedelta(days=ttl_days)
        self._interval = interval_seconds
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def sweep_once(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        if self._outcome_stats is not None:  # the dashboard's minutes, kept two days
            await self._outcome_stats.remove_before(now - OUTCOME_MINUTES_KEPT_FOR)
        removed = await self._jobs.remove_finished_before(now - self._ttl)
        if removed:
            log.info("finished_jobs_removed", count=removed)
        return removed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops between sweeps, never inside one: a task cancelled inside a driver call can
        leave the driver's locks held."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep_once()
            except StoreUnavailable as exc:
                log.warning("retention_sweep_skipped", error=str(exc)[:200])
            except Exception:
                log.exception("retention_sweep_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()

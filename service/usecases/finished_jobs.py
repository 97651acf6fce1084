"""Finished jobs kept in memory, so that a client polling again is answered without MongoDB."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.domain.jobs import JobStatus

T = TypeVar("T")


class FinishedJobs:
    """Finished jobs as their responses need them, kept in memory for a few minutes: a
    terminal job never changes, so a poller that asks again is answered without a database
    round trip, and its response's `data` is rendered once (`rendered`). Bounded in size; an
    entry outlives the job's removal by retention (days later) by at most `KEEP_SECONDS`."""

    KEEP_SECONDS = 300.0
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._jobs: OrderedDict[tuple[str, str], _Finished] = OrderedDict()

    def get(self, job_id: str, client_id: str) -> dict[str, Any] | None:
        entry = self._jobs.get((job_id, client_id))
        if entry is None:
            return None
        if time.monotonic() - entry.kept_at > self.KEEP_SECONDS:
            del self._jobs[(job_id, client_id)]
            return None
        return entry.job

    def keep(self, job_id: str, client_id: str, job: dict[str, Any]) -> None:
        if job["status"] == JobStatus.PENDING:
            return
        self._jobs[(job_id, client_id)] = _Finished(job, time.monotonic())
        if len(self._jobs) > self.MAX_ENTRIES:
            self._jobs.popitem(last=False)

    def rendered(
        self, job_id: str, client_id: str, job: dict[str, Any], render: Callable[[dict], T]
    ) -> T:
        """`render(job)`, made once for the job kept; made each time for any other (a pending
        job, one gone from the cache, or a read that is not the kept one)."""
        entry = self._jobs.get((job_id, client_id))
        if entry is None or entry.job is not job:
            return render(job)
        if entry.rendered is None:
            entry.rendered = render(job)
        return entry.rendered


@dataclass(slots=True)
class _Finished:
    job: dict[str, Any]
    kept_at: float
    rendered: Any = None

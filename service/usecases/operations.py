"""The operators' service layer: the job list, the counts, the dead letters
(`usecases.dead_letters`). The dashboard and `/api/admin/...` read it; it knows nothing of
HTTP."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from service.domain.clock import utcnow
from service.domain.jobs import JobQuery, JobStatus, is_valid_job_id
from service.domain.outcome_counts import minute_key, percentile_ms
from service.messaging.publisher import SubmissionPublisher
from service.storage.jobs import JobStore
from service.storage.outcome_stats import OutcomeStats
from service.usecases.dead_letters import DeadLetterService
from service.usecases.jobs import JobNotFound

PENDING_COUNT_CAP = 10_000
TERMINAL_LABELS = tuple(status.label for status in JobStatus if status.is_terminal)


class OperatorService:
    def __init__(
        self,
        jobs: JobStore,
        outcomes: OutcomeStats,
        publisher: SubmissionPublisher | None,
        dead_letters: DeadLetterService,
    ) -> None:
        self.jobs = jobs
        self.outcomes = outcomes
        self.publisher = publisher
        self.dead_letters = dead_letters

    async def jobs_page(self, query: JobQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of jobs and where the next one starts (None on the last page)."""
        found = await self.jobs.list_jobs(query)
        page = found[: query.limit]
        more = len(found) > query.limit
        return page, (page[-1]["order_key"] if more and page else None)

    async def job(self, job_id: str) -> dict[str, Any]:
        """Any client's job, by id (rendered by `AdminJobSchema`, which leaves `hash` out)."""
        job = await self.jobs.get(job_id) if is_valid_job_id(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def stats(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        minutes = await self.outcomes.since(now - timedelta(days=1))
        hour_start = minute_key(now - timedelta(minutes=59))
        last_hour = [minute for minute in minutes if minute["minute"] >= hour_start]
        pending = await self.jobs.count_pending(PENDING_COUNT_CAP + 1)
        oldest = await self.jobs.list_jobs(
            JobQuery(status=JobStatus.PENDING, oldest_first=True, limit=1)
        )
        oldest_at = oldest[0]["inserted_at"] if oldest else None
        return {
            "pending": {
                "count": min(pending, PENDING_COUNT_CAP),
                "capped": pending > PENDING_COUNT_CAP,
                "oldest_inserted_at": oldest_at,
                "oldest_age_seconds": (now - oldest_at).total_seconds() if oldest_at else None,
            },
            "last_hour": _window(last_hour),
            "last_day": _window(minutes),
            "per_minute": _per_minute(last_hour, now),
            "queue": {
                "ready": await self.publisher.queue_depth() if self.publisher else None,
                "dead_letters": await self.dead_letters.count_if_known(),
            },
            "generated_at": now,
        }


def _window(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: Counter[str] = Counter({label: 0 for label in TERMINAL_LABELS})
    by_code: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for minute in minutes:
        by_status.update(minute["status"])
        by_code.update(minute["code"])
        buckets.update(minute["ms"])
    return {
        "finished": sum(by_status.values()),
        "by_status": dict(by_status),
        "by_status_code": dict(sorted(by_code.items())),
        "processing_ms_p50": percentile_ms(buckets, 0.50),
        "processing_ms_p95": percentile_ms(buckets, 0.95),
    }


def _per_minute(minutes: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The last 60 minutes, oldest first, minutes without jobs included."""
    known = {minute["minute"]: minute["status"] for minute in minutes}
    series = []
    for back in range(59, -1, -1):
        key = minute_key(now - timedelta(minutes=back))
        counts = known.get(key, {})
        series.append({"minute": key, **{label: counts.get(label, 0) for label in TERMINAL_LABELS}})
    return series

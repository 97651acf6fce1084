"""Finished jobs per minute, by outcome, status code and processing time: what the operators'
dashboard charts and counts.

Counting the `jobs` collection on every refresh would read every job (the test server counts by
scanning: 3 s for 100,000 jobs). Instead each consumer counts the jobs it finishes in memory
and adds its counts to `job_minutes` every few seconds, with its load report (one `$inc` per
minute it saw, no write per job): `{_id: "2026-11-27T10:45", "status.processed": n,
"code.200": n, "ms.250": n, ...}`, where `ms.B` counts jobs processed in at most B ms (the
smallest such bound). A refresh reads at most a day of minutes: 1,440 small documents.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from service.domain.outcome_counts import bucket_of, minute_key
from service.storage.mongo import unavailable_on_outage


class OutcomeRecorder:
    """A consumer's finished jobs, counted per minute until `flush` writes them."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._minutes = db["job_minutes"]
        self._counts: dict[str, Counter[str]] = {}

    def record(self, at: datetime, status: str, status_code: int, seconds: float | None) -> None:
        counts = self._counts.setdefault(minute_key(at), Counter())
        counts[f"status.{status}"] += 1
        counts[f"code.{status_code}"] += 1
        if seconds is not None:
            counts[f"ms.{bucket_of(seconds)}"] += 1

    @unavailable_on_outage
    async def flush(self) -> None:
        """Add the counts to `job_minutes`. A count leaves memory only once written, so an
        outage delays counts and does not lose them. (A write that reached the server but
        whose answer was lost is counted again at the next flush: a rare overcount, for a
        dashboard, where a lost count would be a job that seems never to have finished.)"""
        for minute in list(self._counts):
            # Taken out before the write: jobs finishing meanwhile start a new count.
            counts = self._counts.pop(minute)
            try:
                await self._minutes.update_one({"_id": minute}, {"$inc": dict(counts)}, upsert=True)
            except BaseException:
                self._counts.setdefault(minute, Counter()).update(counts)
                raise


class OutcomeStats:
    """Reading `job_minutes`."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._minutes = db["job_minutes"]

    @unavailable_on_outage
    async def since(self, start: datetime) -> list[dict[str, Any]]:
        """The minutes from `start` on, oldest first, each as `{"minute", "status": {...},
        "code": {...}, "ms": {...}}`."""
        found = self._minutes.find({"_id": {"$gte": minute_key(start)}}).sort("_id", 1)
        return [_nested(document) async for document in found]

    @unavailable_on_outage
    async def remove_before(self, cutoff: datetime) -> int:
        result = await self._minutes.delete_many({"_id": {"$lt": minute_key(cutoff)}})
        return result.deleted_count


def _nested(document: dict[str, Any]) -> dict[str, Any]:
    """`{"status.processed": 3}` as `{"status": {"processed": 3}}`, whichever way the server
    stored the dotted `$inc` paths (as nested fields, as MongoDB does, or as flat keys)."""
    minute: dict[str, Any] = {"minute": document["_id"], "status": {}, "code": {}, "ms": {}}
    for key, value in document.items():
        if key == "_id":
            continue
        if isinstance(value, dict) and key in minute:
            for inner, count in value.items():
                minute[key][inner] = minute[key].get(inner, 0) + count
        elif "." in key:
            group, inner = key.split(".", 1)
            if group in minute:
                minute[group][inner] = minute[group].get(inner, 0) + value
    return minute

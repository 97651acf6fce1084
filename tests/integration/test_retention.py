"""Retention: finished jobs go after JOB_TTL_DAYS; pending jobs never do."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from service.domain.clock import utcnow
from service.domain.jobs import JobOutcome, JobStatus
from service.usecases.retention import RetentionSweeper
from tests.conftest import new_job


async def stored(store, db, outcome, finished_days_ago: float) -> str:
    job, _ = await store.create_pending(new_job())
    if outcome is not None:
        await store.finish(job["_id"], outcome)
    updated = utcnow() - timedelta(days=finished_days_ago)
    # Back-dated with insert_one's own codec: `$set` of a date is what the test server mangles.
    document = await db["jobs"].find_one({"_id": job["_id"]})
    await db["jobs"].delete_one({"_id": job["_id"]})
    await db["jobs"].insert_one({**document, "updated_at": updated, "inserted_at": updated})
    return job["_id"]


async def until_removed(db, job_id: str) -> None:
    for _ in range(100):
        if await db["jobs"].count_documents({"_id": job_id}) == 0:
            return
        await asyncio.sleep(0.05)


async def test_finished_jobs_go_after_the_retention_period_pending_ones_stay(store, db):
    processed = JobOutcome.processed([])
    failed = JobOutcome.failed(404, "not_found", "Patient not found")
    crashed = JobOutcome.failed_with_error("boom")
    old = [await stored(store, db, outcome, 8) for outcome in (processed, failed, crashed)]
    recent = [await stored(store, db, outcome, 6) for outcome in (processed, failed)]
    old_pending = await stored(store, db, None, 30)

    removed = await RetentionSweeper(store, ttl_days=7).sweep_once()

    assert removed == 3
    remaining = {job["_id"] async for job in db["jobs"].find({}, {"_id": 1})}
    assert remaining == {*recent, old_pending}
    assert not remaining & set(old)
    pending = await db["jobs"].find_one({"_id": old_pending})
    assert pending["status"] == JobStatus.PENDING


async def test_the_sweeper_runs_until_stopped_and_stops_between_sweeps(store, db):
    old = await stored(store, db, JobOutcome.processed([]), 10)
    sweeper = RetentionSweeper(store, ttl_days=7, interval_seconds=0.05)
    sweeper.start()
    await until_removed(db, old)
    async with asyncio.timeout(5):
        await sweeper.stop()
    assert await db["jobs"].count_documents({"_id": old}) == 0


async def test_the_sweeper_outlives_an_unexpected_error(store, db, monkeypatch):
    old = await stored(store, db, JobOutcome.processed([]), 10)
    original = store.remove_finished_before
    calls = 0

    async def fails_once(cutoff):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one sweep")
        return await original(cutoff)

    monkeypatch.setattr(store, "remove_finished_before", fails_once)
    sweeper = RetentionSweeper(store, ttl_days=7, interval_seconds=0.05)
    sweeper.start()
    await until_removed(db, old)
    async with asyncio.timeout(5):
        await sweeper.stop()
    assert calls >= 2
    assert await db["jobs"].count_documents({"_id": old}) == 0

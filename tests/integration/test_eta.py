"""The ETA of a new job: mean processing time x (1 + jobs ahead / parallelism); and the
Retry-After that pending responses carry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from service.domain.clock import utcnow
from service.domain.jobs import new_job_id
from service.storage.consumer_stats import ConsumerStats
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example

WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


async def test_consumers_report_and_stop_counting_when_silent(db) -> None:
    stats = ConsumerStats(db)
    await stats.report("a", 0.5, 16)
    await stats.report("a", 0.7, 16)
    await stats.report("b", 0.3, 8)
    live = {c["_id"]: c for c in await stats.live(utcnow())}
    assert set(live) == {"a", "b"} and live["a"]["mean_seconds"] == 0.7
    assert isinstance(live["a"]["updated_at"], datetime)
    assert await stats.live(utcnow() + timedelta(minutes=5)) == []
    await stats.forget("a")
    assert [c["_id"] for c in await stats.live(utcnow())] == ["b"]


async def test_a_submission_gets_its_eta_from_the_load(api, db, publisher, patients) -> None:
    await ConsumerStats(db).report("busy-consumer", 2.0, 4)
    for _ in range(8):  # ahead of it, with no consumer taking them
        job_id = new_job_id()
        await publisher.publish(example("encounter_package"), job_id, request_id=job_id)
    await asyncio.sleep(0.2)

    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
    body = await response.json()
    assert response.status == 202, body

    eta = datetime.fromisoformat(body["data"]["eta"].replace("Z", "+00:00"))
    expected = 2.0 * (1 + 8 / 4)  # 6 s
    assert abs((eta - utcnow()).total_seconds() - expected) < 1.5
    assert 5 <= int(response.headers["Retry-After"]) <= 7

    job_id = body["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    polled = await api.get(f"/api/jobs/{job_id}", headers=WRITE)
    assert 1 <= int(polled.headers["Retry-After"]) <= 7


async def test_a_running_consumer_reports_its_processing_time(
    db, settings, patients, publisher, services
):
    from consumers.worker import build_consumer

    consumer = build_consumer(services)
    await consumer.start()
    try:
        job_id = new_job_id()
        await publisher.publish(example("encounter_package"), job_id, request_id=job_id)
        for _ in range(200):
            job = await db["jobs"].find_one({"_id": job_id})
            if job and job["status"] != 0:
                break
            await asyncio.sleep(0.05)
        assert job["eta"] > job["inserted_at"]  # estimated by the consumer for this direct job
        reported = await ConsumerStats(db).live(utcnow())
        assert len(reported) == 1 and reported[0]["prefetch"] == settings.consumer_prefetch
    finally:
        await consumer.stop(drain_seconds=5)
    assert await ConsumerStats(db).live(utcnow()) == []  # a stopped consumer is forgotten

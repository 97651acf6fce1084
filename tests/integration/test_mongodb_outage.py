"""MongoDB unreachable: the API answers 503 in the envelope within a bounded time, never 500,
and comes back by itself when the server does."""

from __future__ import annotations

import asyncio
import time

import pytest
from pymongo import AsyncMongoClient

from service.storage.embedded import EmbeddedMongo, free_port
from service.storage.jobs import JobStore
from tests.conftest import bearer, new_job
from tests.integration.conftest import app_for

# How long the API takes at most to answer while MongoDB is down: what docs/configuration.md
# documents for `MONGODB_TIMEOUT_MS` (one operation may take five times as long as finding a
# server), and slack for a loaded machine. Far below a hanging request.
SLACK_SECONDS = 2.0
# How long the driver takes to find the server again once it is back.
RECOVERY_SECONDS = 15


def bound_seconds(settings) -> float:
    return 5 * settings.mongodb_timeout_ms / 1000 + SLACK_SECONDS


@pytest.mark.faults
async def test_store_outage_answers_503_then_recovers(aiohttp_client, settings, tmp_path) -> None:
    server = EmbeddedMongo(tmp_path / "own-server", port=free_port())
    url = server.start()
    try:
        # Every poll reads MongoDB: a pending job polled again within PENDING_JOB_CACHE_MS
        # would be answered from memory, outage or not (test_poll_from_memory.py).
        fast = settings.with_changes(
            mongodb_url=url, mongodb_timeout_ms=500, pending_job_cache_ms=0
        )
        client = await aiohttp_client(app_for(fast))
        direct = AsyncMongoClient(url, tz_aware=True)
        job, _ = await JobStore(direct[fast.mongodb_db]).create_pending(new_job())
        await direct.close()
        assert (await client.get(f"/api/jobs/{job['_id']}", headers=bearer())).status == 200

        server.stop()
        started = time.monotonic()
        response = await client.get(f"/api/jobs/{job['_id']}", headers=bearer())
        elapsed = time.monotonic() - started
        body = await response.json()
        assert response.status == 503
        assert body["error"]["type"] == "service_unavailable"
        assert body["meta"]["code"] == 503
        assert body["meta"]["request_id"] == response.headers["x-request-id"]
        assert response.headers["Retry-After"].isdigit()
        assert elapsed < bound_seconds(fast), elapsed

        server.start()  # the same port and data directory
        deadline = time.monotonic() + RECOVERY_SECONDS
        while True:  # the driver finds the server again at its next heartbeat
            response = await client.get(f"/api/jobs/{job['_id']}", headers=bearer())
            if response.status != 503 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert response.status == 200
        assert (await response.json())["data"]["status"] == "pending"  # the job, as it was
    finally:
        server.stop()


async def test_api_starts_and_answers_503_while_mongodb_is_down(aiohttp_client, settings) -> None:
    nowhere = settings.with_changes(
        mongodb_url=f"mongodb://127.0.0.1:{free_port()}/", mongodb_timeout_ms=300
    )
    client = await aiohttp_client(app_for(nowhere))
    started = time.monotonic()
    response = await client.get("/api/jobs/some-job", headers=bearer())
    assert response.status == 503
    assert (await response.json())["error"]["type"] == "service_unavailable"
    assert time.monotonic() - started < bound_seconds(nowhere)

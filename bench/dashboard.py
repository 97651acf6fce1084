"""The dashboard with many jobs: the time of each request one refresh of the page makes, with
1,000 jobs and with 100,000 in the database, measured in the same run.

    .venv/bin/python bench/dashboard.py [--jobs 1000 100000] [--rounds 10]

Each size gets a database of its own on the embedded MongoDB: jobs of every outcome (0.5% of
them pending) inserted through `JobStore`'s indexes, a day of per-minute outcome counts, and
`medevents api` serving it. Prints the median milliseconds per request, and the ratio of the
largest size to the smallest: near 1 means no request reads every job.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.domain.clock import utcnow  # noqa: E402
from service.domain.jobs import (  # noqa: E402
    JobOutcome,
    NewJob,
    new_job_id,
)
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402
from service.storage.outcome_stats import OutcomeRecorder  # noqa: E402

SECRET = "dashboard-benchmark-secret-dashboard-benchmark"
OUTCOMES = [
    JobOutcome.processed([]),
    JobOutcome.failed(404, "not_found", "Patient not found"),
    JobOutcome.failed(422, "validation_failed", "Validation failed"),
    JobOutcome.failed_with_error("Unexpected error"),
]
REQUESTS = {
    "stats": "/api/admin/stats",
    "oldest pending": "/api/admin/jobs?status=pending&order=oldest&limit=10",
    "latest failed": "/api/admin/jobs?status=failed&limit=10",
    "latest 500s": "/api/admin/jobs?status=failed_with_error&limit=10",
    "newest 50": "/api/admin/jobs?limit=50",
    "one client": "/api/admin/jobs?client_id=mis-3&limit=50",
}


async def seed(mongodb_url: str, db_name: str, count: int) -> None:
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    await JobStore(db).ensure_indexes()
    now = utcnow()
    batch = []
    for n in range(count):
        inserted = now - timedelta(seconds=(count - n) * 0.5)
        job = NewJob(
            new_job_id(),
            "encounter_package.create",
            uuid.uuid4().hex,
            f"mis-{n % 10}",
            "u",
            "req",
            inserted,
            str(uuid.uuid4()),
        ).to_document(inserted)
        if n < count - count // 200:  # the newest 0.5% stay pending
            job.update(random.choice(OUTCOMES).to_update())
        batch.append(job)
        if len(batch) == 2_000:
            await db["jobs"].insert_many(batch)
            batch = []
    if batch:
        await db["jobs"].insert_many(batch)
    recorder = OutcomeRecorder(db)
    for minute in range(24 * 60):
        for outcome in OUTCOMES:
            status = outcome.status.label
            recorder.record(now - timedelta(minutes=minute), status, outcome.status_code, 0.05)
    await recorder.flush()
    await client.close()


async def measure(base: str, rounds: int) -> dict[str, float]:
    token = mint_token(SECRET, "ops", ["jobs:admin"], "u", 3600)
    headers = {"Authorization": f"Bearer {token}"}
    timings: dict[str, list[float]] = {name: [] for name in REQUESTS}
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(rounds):
            for name, path in REQUESTS.items():
                started = time.perf_counter()
                async with http.get(f"{base}{path}") as response:
                    await response.read()
                    assert response.status == 200, (path, response.status)
                timings[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def run_size(mongodb_url: str, data_dir: str, count: int, rounds: int) -> dict[str, float]:
    db_name = f"dash_{uuid.uuid4().hex[:8]}"
    prefix = f"dash.{uuid.uuid4().hex[:8]}."
    started = time.monotonic()
    asyncio.run(seed(mongodb_url, db_name, count))
    print(f"  {count:,} jobs seeded in {time.monotonic() - started:.0f} s", flush=True)
    port = free_port()
    env = service_env(mongodb_url, db_name, prefix, SECRET, data_dir, HTTP_PORT=str(port))
    api = start_medevents("api", env)
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{port}/health/ready"))
        return asyncio.run(measure(f"http://127.0.0.1:{port}", rounds))
    finally:
        api.terminate()
        api.wait(timeout=30)
        asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        results = {
            count: run_size(mongodb_url, data_dir, count, args.rounds) for count in args.jobs
        }
    smallest, largest = min(results), max(results)
    print(f"median ms per request, {args.rounds} rounds; ratio = {largest:,} / {smallest:,} jobs")
    header = "".join(f" | {count:>9,} jobs" for count in results)
    print(f"{'request':16s}{header} | ratio")
    for name in REQUESTS:
        cells = "".join(f" | {results[count][name]:9.1f} ms" for count in results)
        print(f"{name:16s}{cells} | {results[largest][name] / results[smallest][name]:5.2f}")


if __name__ == "__main__":
    main()

"""The dashboard with many jobs: the time of each request one refresh of the page makes, with
1,000 jobs and with 100,000 in the database, measured in the same run.

    .venv/bin/python bench/dashboard.py [--quick] [--jobs 1000 100000] [--rounds 10]

Each size gets a database of its own on the embedded MongoDB, holding what a deployment with
that many jobs would hold: a week of history (JOB_TTL_DAYS) whose jobs arrive as a real
service's do (working hours busier than evenings, nights and weekends quiet), from 20 MIS
clients of unequal size, ending as real jobs end (mostly processed, some 422s, a few 404s,
409s, 500s and cancels), each after a processing time of its own; the consumers behind by the
newest 0.5% (pending). The per-minute outcome counts (`job_minutes`, two days kept) are those
of these jobs, recorded as the consumers record them: so a larger size has busier minutes and
more of them, as in real life. Both sizes' `medevents api` run at once; the rounds alternate
their order. Prints the median milliseconds per request, and the ratio of the largest size to
the smallest: near 1 means the request does not read more as the jobs grow. The stats read the
last day's minutes, one document each: they grow with the minutes that saw a job, up to 1,440
(a day's), and no further. --quick: 1,000 and 20,000 jobs, 5 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.config import Settings  # noqa: E402
from service.domain.clock import utcnow  # noqa: E402
from service.domain.entities import ENCOUNTER, ENCOUNTER_ENTITY_KINDS  # noqa: E402
from service.domain.jobs import (  # noqa: E402
    JobOutcome,
    Link,
    NewJob,
    entity_href,
    new_job_id,
)
from service.domain.outcome_counts import KEPT_FOR  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402
from service.storage.outcome_stats import OutcomeRecorder  # noqa: E402

SECRET = "dashboard-benchmark-secret-dashboard-benchmark"
CLIENTS = [f"mis-{n}" for n in range(20)]
# Client n sends in proportion to 1 / (n + 1): a few large MIS, many small ones.
CLIENT_WEIGHTS = [1 / (n + 1) for n in range(len(CLIENTS))]
JOB_TYPES = {
    "encounter_package.create": 0.80,
    "episode.create": 0.08,
    "episode.close": 0.05,
    "service_request.create": 0.05,
    "diagnostic_report_package.create": 0.02,
}
REQUESTS = {
    "stats": "/api/admin/stats",
    "oldest pending": "/api/admin/jobs?status=pending&order=oldest&limit=10",
    "latest failed": "/api/admin/jobs?status=failed&limit=10",
    "latest 500s": "/api/admin/jobs?status=failed_with_error&limit=10",
    "newest 50": "/api/admin/jobs?limit=50",
    "one client": "/api/admin/jobs?client_id=mis-3&limit=50",
}
PENDING_SHARE = 0.005


# The history is laid out as if the benchmark ran on a Wednesday at 15:00 in Kyiv (UTC+2),
# whenever it runs: the same week, so the same figures, on any day.
SHOWN_AS = datetime(2026, 12, 2, 15, 0)


def hour_weight(local: datetime) -> float:
    """How busy an hour is, relative to a weekday's peak: clinics work 8:00-18:00 (local
    time), evenings are lighter, nights nearly empty, weekends a third of weekdays."""
    hour = local.hour
    if 8 <= hour < 18:
        weight = 1.0 if hour not in (12, 13) else 0.7
    elif 18 <= hour < 22 or 6 <= hour < 8:
        weight = 0.25
    else:
        weight = 0.03
    return weight / 3 if local.weekday() >= 5 else weight


def arrival_times(count: int, now: datetime, days: int, rng: random.Random) -> list[datetime]:
    """`count` submission times over the last `days`, drawn minute by minute with the hours'
    weights (Poisson-like: busy minutes get many, quiet ones none), oldest first."""
    minutes = days * 24 * 60
    start = now - timedelta(minutes=minutes)
    slots = [start + timedelta(minutes=m) for m in range(minutes)]
    shift = SHOWN_AS - now.replace(tzinfo=None)
    weights = [hour_weight(slot.replace(tzinfo=None) + shift) for slot in slots]
    chosen = rng.choices(slots, weights, k=count)
    return sorted(slot + timedelta(seconds=rng.random() * 60) for slot in chosen)


def outcome_for(job_type: str, patient_id: str, rng: random.Random) -> JobOutcome:
    draw = rng.random()
    if draw < 0.04:
        invalid = [
            {
                "entry_type": "json_data_property",
                "entry": f"$.observations.[{n}].value_quantity",
                "rules": [{"rule": "required", "params": [], "description": "required"}],
            }
            for n in range(rng.randint(1, 5))
        ]
        return JobOutcome.validation_failed(invalid)
    if draw < 0.05:
        return JobOutcome.failed(404, "not_found", "Patient not found")
    if draw < 0.06:
        return JobOutcome.failed(409, "request_conflict", "Patient is not active")
    if draw < 0.065:
        return JobOutcome.cancelled()
    if draw < 0.07:
        return JobOutcome.failed_with_error("Unexpected error")
    if job_type != "encounter_package.create":
        return JobOutcome.processed(
            [Link("episode", entity_href(patient_id, "episodes", str(uuid.uuid4())))]
        )
    # A package: its encounter and a few entities (most packages are small).
    links = [Link(ENCOUNTER.entity, entity_href(patient_id, "encounters", str(uuid.uuid4())))]
    for _ in range(min(int(rng.expovariate(1 / 4)), 50)):
        kind = rng.choice(ENCOUNTER_ENTITY_KINDS)
        links.append(Link(kind.entity, entity_href(patient_id, kind.collection, str(uuid.uuid4()))))
    return JobOutcome.processed(links)


async def seed(mongodb_url: str, db_name: str, count: int, now: datetime) -> dict[str, int]:
    """The jobs of a week's history and their per-minute counts; returns what was written."""
    rng = random.Random(count)
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    await JobStore(db).ensure_indexes()
    recorder = OutcomeRecorder(db)
    minutes_from = now - KEPT_FOR
    arrivals = arrival_times(count, now, Settings().job_ttl_days, rng)
    pending_from = count - max(1, round(count * PENDING_SHARE))
    types, type_weights = list(JOB_TYPES), list(JOB_TYPES.values())
    batch, pending = [], 0
    for n, inserted in enumerate(arrivals):
        job_type = rng.choices(types, type_weights)[0]
        patient_id = str(uuid.uuid4())
        job = NewJob(
            new_job_id(),
            job_type,
            uuid.uuid4().hex,
            rng.choices(CLIENTS, CLIENT_WEIGHTS)[0],
            f"user-{rng.randrange(500)}",
            uuid.uuid4().hex,
            inserted + timedelta(seconds=30),
            patient_id,
        ).to_document(inserted)
        if n < pending_from:
            outcome = outcome_for(job_type, patient_id, rng)
            # Processing times: log-normal, median 80 ms, a long tail.
            seconds = math.exp(rng.gauss(math.log(0.08), 0.9))
            finished = inserted + timedelta(seconds=seconds)
            job.update(outcome.to_update(), attempts=1, updated_at=finished)
            if finished >= minutes_from:
                recorder.record(finished, outcome.status.label, outcome.status_code, seconds)
        else:
            pending += 1
        batch.append(job)
        if len(batch) == 1_000:
            await db["jobs"].insert_many(batch)
            batch = []
    if batch:
        await db["jobs"].insert_many(batch)
    await recorder.flush()
    minutes = await db["job_minutes"].count_documents({})
    last_day = await db["job_minutes"].count_documents(
        {"_id": {"$gte": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")}}
    )
    await client.close()
    return {"pending": pending, "minutes": minutes, "last_day_minutes": last_day}


async def measure(bases: dict[int, str], rounds: int) -> dict[int, dict[str, list[float]]]:
    """Each round, each size in turn (the order alternating), each request of a refresh."""
    token = mint_token(SECRET, "ops", ["jobs:admin"], "u", 3600)
    headers = {"Authorization": f"Bearer {token}"}
    timings = {size: {name: [] for name in REQUESTS} for size in bases}
    sizes = list(bases)
    async with aiohttp.ClientSession(headers=headers) as http:
        for round_ in range(rounds + 1):  # the first round warms up, and is not counted
            for size in sizes if round_ % 2 == 0 else sizes[::-1]:
                for name, path in REQUESTS.items():
                    started = time.perf_counter()
                    async with http.get(f"{bases[size]}{path}") as response:
                        await response.read()
                        assert response.status == 200, (path, response.status)
                    if round_:
                        timings[size][name].append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--jobs", type=int, nargs="+", help="sizes (1000 100000; --quick 1000 20000)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of requests (10; --quick 5)")
    args = parser.parse_args()
    counts = args.jobs or ([1_000, 20_000] if args.quick else [1_000, 100_000])
    rounds = args.rounds or (5 if args.quick else 10)
    now = utcnow()
    apis, prefixes = {}, {}
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        try:
            bases = {}
            for count in counts:
                db_name = f"dash_{uuid.uuid4().hex[:8]}"
                prefixes[count] = f"dash.{uuid.uuid4().hex[:8]}."
                started = time.monotonic()
                written = asyncio.run(seed(mongodb_url, db_name, count, now))
                print(
                    f"  {count:,} jobs seeded in {time.monotonic() - started:.0f} s: "
                    f"{written['pending']:,} pending, {written['minutes']:,} minutes counted "
                    f"({written['last_day_minutes']:,} in the last day)",
                    flush=True,
                )
                port = free_port()
                env = service_env(
                    mongodb_url, db_name, prefixes[count], SECRET, data_dir, HTTP_PORT=str(port)
                )
                apis[count] = start_medevents("api", env)
                bases[count] = f"http://127.0.0.1:{port}"
            for base in bases.values():
                asyncio.run(wait_up(f"{base}/health/ready"))
            timings = asyncio.run(measure(bases, rounds))
        finally:
            for api in apis.values():
                api.terminate()
            for api in apis.values():
                api.wait(timeout=30)
            for prefix in prefixes.values():
                asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))
    results = {
        count: {name: statistics.median(values) for name, values in by_name.items()}
        for count, by_name in timings.items()
    }
    smallest, largest = min(results), max(results)
    print(f"median ms per request, {rounds} rounds; ratio = {largest:,} / {smallest:,} jobs")
    header = "".join(f" | {count:>9,} jobs" for count in results)
    print(f"{'request':16s}{header} | ratio")
    for name in REQUESTS:
        cells = "".join(f" | {results[count][name]:11.1f} ms" for count in results)
        print(f"{name:16s}{cells} | {results[largest][name] / results[smallest][name]:5.2f}")


if __name__ == "__main__":
    main()

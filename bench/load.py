"""Load: pollers and a steady producer against one API process and one consumer process.

    .venv/bin/python bench/load.py [--duration 60] [--rate 10] [--pollers 50]

Starts its own embedded MongoDB, `medevents api` and `medevents consumer` (each a process of
its own, on exchanges and queues of their own), then for `--duration` seconds submits
`--rate` packages a second over HTTP while `--pollers` clients poll random submitted jobs
without pause. This process is the load generator (aiohttp). Prints: submissions, polls,
error responses (any 5xx, or a status the API does not document), poll latency p50/p99, job
time p50/p99 (the server's `inserted_at` to `updated_at`), jobs processed (the example's
packages are unsigned: the consumer runs with SIGNATURE_MODE=decode), and jobs lost (still
pending a minute after the last submission).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, percentile, service_env, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.cli.demo import DEMO_CLIENT, DEMO_USER, write_demo_records  # noqa: E402
from service.cli.publish import with_new_ids  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.entities import EntityStore  # noqa: E402
from service.storage.patients import PatientStore  # noqa: E402
from service.storage.registries import RegistryStore  # noqa: E402

EXAMPLE = orjson.loads((ROOT / "examples/encounter_package.json").read_bytes())
SECRET = "load-benchmark-secret-load-benchmark-secret"
DOCUMENTED = {200, 202, 303, 304, 404}


async def run_load(base: str, duration: float, rate: float, pollers: int) -> dict:
    token = mint_token(SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], DEMO_USER, 3600)
    headers = {"Authorization": f"Bearer {token}"}
    submitted: list[str] = []
    poll_latencies: list[float] = []
    errors: list[int] = []
    deadline = time.monotonic() + duration
    url = f"{base}/api/patients/{EXAMPLE['patient_id']}/encounter_package"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pollers + 10)) as http:

        async def submit_one() -> None:
            body = orjson.dumps(with_new_ids(EXAMPLE)["data"])
            async with http.post(url, data=body, headers=headers) as response:
                payload = await response.json()
                if response.status == 202:
                    submitted.append(payload["data"]["links"][0]["href"])
                else:
                    errors.append(response.status)

        async def produce() -> None:
            """At a steady rate, whatever the answers' latency: one task per submission."""
            next_at, sending = time.monotonic(), []
            while time.monotonic() < deadline:
                sending.append(asyncio.create_task(submit_one()))
                next_at += 1 / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*sending)

        async def poll() -> None:
            while time.monotonic() < deadline:
                if not submitted:
                    await asyncio.sleep(0.05)
                    continue
                started = time.perf_counter()
                async with http.get(
                    base + random.choice(submitted), headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                poll_latencies.append(time.perf_counter() - started)
                if response.status not in DOCUMENTED:
                    errors.append(response.status)

        await asyncio.gather(produce(), *(poll() for _ in range(pollers)))
    return {"submitted": submitted, "polls": poll_latencies, "errors": errors}


async def job_times(
    mongodb_url: str, db_name: str, job_ids: list[str]
) -> tuple[list[float], int, int]:
    """The terminal jobs' times, how many were processed, how many were lost."""
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        jobs = client[db_name]["jobs"]
        for _ in range(600):  # a minute for the last ones
            if await jobs.count_documents({"_id": {"$in": job_ids}, "status": 0}) == 0:
                break
            await asyncio.sleep(0.1)
        times = [
            (job["updated_at"] - job["inserted_at"]).total_seconds()
            async for job in jobs.find({"_id": {"$in": job_ids}, "status": {"$ne": 0}})
        ]
        processed = await jobs.count_documents({"_id": {"$in": job_ids}, "status": 1})
        return times, processed, len(job_ids) - len(times)  # pending or missing: lost
    finally:
        await client.close()


async def seed(mongodb_url: str, db_name: str) -> None:
    """The patients and registry records the example refers to (`service.cli.demo`)."""
    client = AsyncMongoClient(mongodb_url)
    try:
        db = client[db_name]
        await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--rate", type=float, default=10, help="submissions per second")
    parser.add_argument("--pollers", type=int, default=50)
    args = parser.parse_args()

    prefix = f"load.{uuid.uuid4().hex[:8]}."
    db_name = f"load_{uuid.uuid4().hex[:8]}"
    port = free_port()
    medevents = str(Path(sys.executable).parent / "medevents")
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        asyncio.run(seed(mongodb_url, db_name))
        env = service_env(
            mongodb_url,
            db_name,
            prefix,
            SECRET,
            data_dir,
            HTTP_PORT=str(port),
            SIGNATURE_MODE="decode",  # the example's packages are unsigned
        )
        processes = [
            subprocess.Popen([medevents, command], env=env, stdout=subprocess.DEVNULL)
            for command in ("api", "consumer")
        ]
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(wait_up(f"{base}/health/ready"))
            result = asyncio.run(run_load(base, args.duration, args.rate, args.pollers))
            job_ids = [href.rsplit("/", 1)[-1] for href in result["submitted"]]
            times, processed, lost = asyncio.run(job_times(mongodb_url, db_name, job_ids))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
            asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))

    polls = result["polls"]
    print(f"{args.duration:.0f} s, {args.pollers} pollers, {args.rate:g} submissions/s")
    print(f"  submissions accepted   {len(job_ids)}")
    print(f"  polls                  {len(polls)} ({len(polls) / args.duration:.0f}/s)")
    print(f"  error responses        {len(result['errors'])}")
    print(
        f"  poll latency p50/p99   {percentile(polls, 0.5) * 1000:.1f} / "
        f"{percentile(polls, 0.99) * 1000:.1f} ms"
    )
    print(
        f"  job time p50/p99       {percentile(times, 0.5) * 1000:.0f} / "
        f"{percentile(times, 0.99) * 1000:.0f} ms (inserted_at to updated_at)"
    )
    print(f"  jobs processed         {processed}")
    print(f"  jobs lost              {lost}")
    if times:
        print(f"  job time mean          {statistics.mean(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

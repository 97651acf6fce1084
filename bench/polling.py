"""Polling: `GET /api/jobs/{id}` against two baselines measured in the same run.

    .venv/bin/python bench/polling.py [--seconds 5] [--jobs 200]

Servers, each a process of its own on the same embedded MongoDB server:
  ours          `medevents api` (auth, middlewares, schemas, structlog at info)
  find          a bare aiohttp handler doing the same find_one and json.dumps (baseline a)
  constant      a bare aiohttp handler returning a constant body (baseline b, the framework)
The load generator is this process (aiohttp), polling random jobs, pending or finished, at
concurrency 1, 16 and 64. Prints requests/s and p50/p99 latency, and ours / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.domain.jobs import (  # noqa: E402
    JobOutcome,
    Link,
    NewJob,
    new_job_id,
)
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402

SECRET = "polling-benchmark-secret-polling-benchmark"
CLIENT = "bench-mis"
CONCURRENCY = (1, 16, 64)


async def seed(mongodb_url: str, db_name: str, count: int) -> dict[str, list[str]]:
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    store = JobStore(client[db_name])
    await store.ensure_indexes()
    jobs: dict[str, list[str]] = {"pending": [], "finished": []}
    links = [Link("encounter", f"/api/patients/p/encounters/{uuid.uuid4()}") for _ in range(11)]
    for kind in jobs:
        for _ in range(count):
            job_id = new_job_id()
            await store.create_pending(
                NewJob(
                    job_id,
                    "encounter_package.create",
                    uuid.uuid4().hex,
                    CLIENT,
                    "u",
                    "req",
                    datetime.now(UTC) + timedelta(seconds=30),
                )
            )
            if kind == "finished":
                await store.finish(job_id, JobOutcome.processed(links))
            jobs[kind].append(job_id)
    await client.close()
    return jobs


async def measure(base: str, job_ids: list[str], concurrency: int, seconds: float) -> dict:
    token = mint_token(SECRET, CLIENT, ["job:read"], "u", 3600)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    bad = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal bad
            while time.monotonic() < deadline:
                started = time.perf_counter()
                url = f"{base}/api/jobs/{random.choice(job_ids)}"
                async with http.get(url, headers=headers, allow_redirects=False) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                bad += response.status not in (200, 303)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "bad": bad,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    db_name = f"poll_{uuid.uuid4().hex[:8]}"
    python = sys.executable
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        jobs = asyncio.run(seed(mongodb_url, db_name, args.jobs))
        ports = {name: free_port() for name in ("ours", "find", "constant")}
        prefix = f"poll.{uuid.uuid4().hex[:8]}."
        # Logs at info, as in production: their cost is part of what is measured.
        env = service_env(
            mongodb_url,
            db_name,
            prefix,
            SECRET,
            data_dir,
            HTTP_PORT=str(ports["ours"]),
            LOG_LEVEL="info",
        )
        commands = {
            "ours": [str(Path(python).parent / "medevents"), "api"],
            "find": [
                python,
                str(ROOT / "bench/baseline_server.py"),
                "find",
                str(ports["find"]),
                mongodb_url,
                db_name,
            ],
            "constant": [
                python,
                str(ROOT / "bench/baseline_server.py"),
                "constant",
                str(ports["constant"]),
            ],
        }
        servers = {
            name: subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for name, command in commands.items()
        }
        try:
            for port in ports.values():
                asyncio.run(wait_up(f"http://127.0.0.1:{port}/api/jobs/x", any_status=True))
            print(f"{args.seconds:g} s per run; requests/s, p50/p99 ms; ratio = ours / baseline")
            for kind in ("pending", "finished"):
                for concurrency in CONCURRENCY:
                    results = {
                        name: asyncio.run(
                            measure(
                                f"http://127.0.0.1:{port}", jobs[kind], concurrency, args.seconds
                            )
                        )
                        for name, port in ports.items()
                    }
                    ours = results["ours"]
                    line = f"{kind:8s} c={concurrency:<3d}"
                    for name, result in results.items():
                        line += (
                            f" | {name} {result['rps']:7.0f}/s "
                            f"{result['p50']:5.1f}/{result['p99']:5.1f}"
                        )
                    line += (
                        f" | ours/find {ours['rps'] / results['find']['rps']:.2f}"
                        f" ours/constant {ours['rps'] / results['constant']['rps']:.2f}"
                    )
                    if ours["bad"]:
                        line += f" | {ours['bad']} unexpected statuses"
                    print(line, flush=True)
        finally:
            for server in servers.values():
                server.terminate()
            for server in servers.values():
                server.wait(timeout=30)

            asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))


if __name__ == "__main__":
    main()

"""Memory: the API's resident size over a long run of polls, which must stay flat.

    .venv/bin/python bench/memory.py [--requests 1000000] [--clients 2]

`medevents api` (logs at info, to /dev/null) on the embedded MongoDB, polled by load
generators in processes of their own: finished jobs (60%), pending jobs (30%), unknown ids
(5%, 404) and a bad token (5%, 401), each request with a request id of its own. The API's
RSS is sampled from /proc as the count grows; the growth is measured from the end of the
warm-up (the first 5% of the requests) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from bench.polling import CLIENT, SECRET, seed  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402

CONCURRENCY = 32


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def generate(base: str, jobs: dict, done: Synchronized, limit: int) -> None:
    good = {"Authorization": f"Bearer {mint_token(SECRET, CLIENT, ['job:read'], 'u', 7200)}"}
    bad = {"Authorization": "Bearer not.a.token"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            while done.value < limit:
                draw = random.random()
                if draw < 0.6:
                    job_id, headers = random.choice(jobs["finished"]), good
                elif draw < 0.9:
                    job_id, headers = random.choice(jobs["pending"]), good
                elif draw < 0.95:
                    job_id, headers = uuid.uuid4().hex, good
                else:
                    job_id, headers = random.choice(jobs["finished"]), bad
                headers = {**headers, "X-Request-Id": uuid.uuid4().hex}
                async with http.get(f"{base}/api/jobs/{job_id}", headers=headers) as response:
                    await response.read()
                with done.get_lock():
                    done.value += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def client_process(base: str, jobs: dict, done: Synchronized, limit: int) -> None:
    asyncio.run(generate(base, jobs, done, limit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    db_name = f"mem_{uuid.uuid4().hex[:8]}"
    prefix = f"mem.{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        jobs = asyncio.run(seed(mongodb_url, db_name, 200))
        port = free_port()
        env = service_env(
            mongodb_url, db_name, prefix, SECRET, data_dir, HTTP_PORT=str(port), LOG_LEVEL="info"
        )
        api = start_medevents("api", env)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_up(f"{base}/health/live"))
            done = multiprocessing.Value("q", 0)
            clients = [
                multiprocessing.Process(
                    target=client_process, args=(base, jobs, done, args.requests)
                )
                for _ in range(args.clients)
            ]
            started = time.monotonic()
            for client in clients:
                client.start()
            warm_up = args.requests // 20
            checkpoints = [warm_up] + [args.requests * n // 10 for n in range(1, 11)]
            samples: list[tuple[int, float]] = []
            print(f"{args.requests:,} requests; RSS of `medevents api` in MiB")
            while checkpoints:
                if done.value >= checkpoints[0]:
                    samples.append((checkpoints.pop(0), rss_mib(api.pid)))
                    count, rss = samples[-1]
                    rate = done.value / (time.monotonic() - started)
                    print(f"  {count:>9,} requests  {rss:6.1f} MiB  ({rate:,.0f} requests/s)")
                    continue
                if not any(client.is_alive() for client in clients):
                    break
                time.sleep(0.2)
            for client in clients:
                client.join()
            baseline, final = samples[0][1], samples[-1][1]
            peak = max(rss for _, rss in samples[1:])
            print(
                f"after warm-up {baseline:.1f} MiB, at the end {final:.1f} MiB, peak {peak:.1f}:"
                f" growth {(final - baseline) / baseline * 100:+.1f}%"
                f" (peak {(peak - baseline) / baseline * 100:+.1f}%)"
            )
        finally:
            api.terminate()
            api.wait(timeout=30)
            asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))


if __name__ == "__main__":
    main()

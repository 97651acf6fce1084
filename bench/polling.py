"""Polling: `GET /api/jobs/{id}` against two baselines, driven by wrk, ratios within one run.

    .venv/bin/python bench/polling.py [--quick] [--seconds 6] [--rounds 3] [--connections 1 32 64]

Servers, each a process of its own on uvloop, on the same embedded MongoDB server and the
same jobs (`bench/baseline_server.py`):
  ours          `medevents api` (auth, middlewares, schemas, structlog at info, as deployed)
  (a) find_one  a bare aiohttp handler: `find_one` of the job and `json.dumps` of it
  (b) constant  a bare aiohttp handler answering, for each job, the very response (status,
                headers, body) ours gave for a job of its kind: the framework's limit

The load generator is wrk (native; 1 thread; 32 connections, and also 1 and 64 in the
default mode), with `bench/wrk/poll.lua`: random jobs from a file, the same sequence for every
server, a bearer token on every request. Cases: pending jobs, finished (processed) jobs.
For each case the servers are interleaved: three rounds, the order rotated each round (ours,
a, b; a, b, ours; b, ours, a), after one unrecorded 1 s warm-up run of ours and of (a) (it
fills ours' caches and their MongoDB connection pools; (b) has nothing to warm). Prints each
run, then a markdown table of the medians (requests/s, p50/p99 latency from wrk) and the
ratios ours / (a) and ours / (b): the ratio of the medians, and in brackets the range of the
rounds' ratios. Exits 1 when any server answered a status other than 2xx/3xx or wrk saw a
socket error. `--quick`: 2 s runs, 32 connections only (about 50 s in all); the default
takes about 6 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    AMQP_URL,
    WRK_SCRIPTS,
    WrkResult,
    run_wrk,
    service_env,
    stop_processes,
    wait_up,
)
from service.api.auth import mint_token  # noqa: E402
from service.domain.jobs import JobOutcome, Link, NewJob, new_job_id  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402

SECRET = "polling-benchmark-secret-polling-benchmark"
CLIENT = "bench-mis"
SERVERS = ("ours", "find", "constant")
LABELS = {"ours": "ours", "find": "(a) find_one", "constant": "(b) constant"}
KINDS = ("pending", "finished")
# What ours answers for a job of each kind; anything else means the benchmark measures an error.
EXPECTED_STATUS = {"pending": 200, "finished": 303}
# Headers of ours' answer that the constant server's framework sets itself.
FRAMEWORK_HEADERS = {"content-length", "date", "server", "connection", "transfer-encoding"}


async def seed(mongodb_url: str, db_name: str, count: int) -> dict[str, list[str]]:
    """`count` pending and `count` processed jobs (eleven links, as the example package's)."""
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
    store = JobStore(client[db_name])
    await store.ensure_indexes()
    jobs: dict[str, list[str]] = {kind: [] for kind in KINDS}
    links = [Link("encounter", f"/api/patients/p/encounters/{uuid.uuid4()}") for _ in range(11)]
    for kind in KINDS:
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


async def capture(base: str, jobs: dict[str, list[str]], token: str) -> dict[str, dict]:
    """Ours' answer to a job of each kind (status, headers, body), checked against what the
    benchmark means to measure, for the constant server to repeat."""
    headers = {"Authorization": f"Bearer {token}"}
    answers: dict[str, dict] = {}
    async with aiohttp.ClientSession() as http:
        for kind, ids in jobs.items():
            async with http.get(
                f"{base}/api/jobs/{ids[0]}", headers=headers, allow_redirects=False
            ) as response:
                body = await response.text()
                if response.status != EXPECTED_STATUS[kind]:
                    raise RuntimeError(f"ours answered {response.status} for a {kind} job: {body}")
                answers[kind] = {
                    "status": response.status,
                    "headers": {
                        name: value
                        for name, value in response.headers.items()
                        if name.lower() not in FRAMEWORK_HEADERS
                    },
                    "body": body,
                }
    return answers


async def check_server(base: str, job_id: str, token: str) -> tuple[str, int, int]:
    """The server's event loop, and its status and body size for `job_id`."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/_loop") as response:
            loop = await response.text() if response.status == 200 else "?"
        async with http.get(
            f"{base}/api/jobs/{job_id}",
            headers={"Authorization": f"Bearer {token}"},
            allow_redirects=False,
        ) as response:
            body = await response.read()
            if body == b"null":
                raise RuntimeError(f"{base} did not find job {job_id}")
            return loop, response.status, len(body)


@dataclass
class Case:
    kind: str
    connections: int
    runs: dict[str, list[WrkResult]]

    def median(self, server: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in self.runs[server])

    def ratio(self, baseline: str) -> str:
        """The ratio of the medians of req/s, and the range of the rounds' ratios."""
        ratio = self.median("ours", "rps") / self.median(baseline, "rps")
        rounds = [
            ours.rps / base.rps
            for ours, base in zip(self.runs["ours"], self.runs[baseline], strict=True)
        ]
        return f"{ratio:.2f} ({min(rounds):.2f}-{max(rounds):.2f})"

    def cell(self, server: str) -> str:
        return (
            f"{self.median(server, 'rps'):,.0f}/s ({self.median(server, 'p50_ms'):.1f} / "
            f"{self.median(server, 'p99_ms'):.1f} ms)"
        )


def table(cases: list[Case]) -> str:
    lines = [
        "| jobs | connections | ours | (a) find_one | (b) constant | ours / (a) | ours / (b) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        lines.append(
            f"| {case.kind} | {case.connections} | {case.cell('ours')} | {case.cell('find')} "
            f"| {case.cell('constant')} | {case.ratio('find')} | {case.ratio('constant')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 32 connections only")
    parser.add_argument("--seconds", type=int, help="per wrk run (default 6; --quick: 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections", type=int, nargs="+", help="wrk connections (default 1 32 64; --quick: 32)"
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs of each kind")
    args = parser.parse_args()
    seconds = args.seconds or (2 if args.quick else 6)
    connections = args.connections or ([32] if args.quick else [1, 32, 64])
    if shutil.which("wrk") is None:
        print("polling: wrk is missing (scripts/ensure-bench-tools installs it)", file=sys.stderr)
        return 2

    db_name = f"poll_{uuid.uuid4().hex[:8]}"
    prefix = f"poll.{uuid.uuid4().hex[:8]}."
    python = sys.executable
    token = mint_token(SECRET, CLIENT, ["job:read"], "u", 3600)
    started = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        jobs = asyncio.run(seed(mongodb_url, db_name, args.jobs))
        ids_files = {}
        for kind, ids in jobs.items():
            ids_files[kind] = Path(data_dir) / f"{kind}.ids"
            ids_files[kind].write_text("\n".join(ids) + "\n")
        ports = {name: free_port() for name in SERVERS}
        bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        env = service_env(
            mongodb_url,
            db_name,
            prefix,
            SECRET,
            data_dir,
            HTTP_PORT=str(ports["ours"]),
            LOG_LEVEL="info",  # as in production: the logs' cost is part of what is measured
        )
        baseline = [python, str(ROOT / "bench/baseline_server.py")]
        servers: dict[str, subprocess.Popen] = {}

        def start(name: str, command: list[str]) -> None:
            servers[name] = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

        try:
            start("ours", [str(Path(python).parent / "medevents"), "api"])
            start("find", [*baseline, "find", str(ports["find"]), mongodb_url, db_name])
            for name in ("ours", "find"):
                asyncio.run(wait_up(f"{bases[name]}/api/jobs/x", any_status=True))
            # The constant server repeats ours' answers: captured first.
            responses = Path(data_dir) / "responses.json"
            answers = asyncio.run(capture(bases["ours"], jobs, token))
            kinds = {job_id: kind for kind, ids in jobs.items() for job_id in ids}
            responses.write_text(json.dumps({"responses": answers, "kinds": kinds}))
            start("constant", [*baseline, "constant", str(ports["constant"]), str(responses)])
            asyncio.run(wait_up(f"{bases['constant']}/_loop"))

            print(f"wrk: 1 thread, {seconds} s runs, {args.rounds} rounds, rotated order")
            for kind in KINDS:
                sizes = []
                for name in SERVERS:
                    loop, status, size = asyncio.run(
                        check_server(bases[name], jobs[kind][0], token)
                    )
                    sizes.append(f"{LABELS[name]} {status} {size} B")
                    if name != "ours" and not loop.startswith("uvloop"):
                        raise RuntimeError(f"{name} runs on {loop}, not uvloop")
                print(f"{kind} job answers: " + ", ".join(sizes))

            cases: list[Case] = []
            for kind in KINDS:
                for name in ("ours", "find"):  # warm-up, unrecorded (constant has no state)
                    run_wrk(
                        WRK_SCRIPTS / "poll.lua",
                        bases[name],
                        [str(ids_files[kind]), token, "7"],
                        connections=max(connections),
                        seconds=1,
                    )
                for count in connections:
                    case = Case(kind, count, {name: [] for name in SERVERS})
                    for round_ in range(args.rounds):
                        order = SERVERS[round_ % 3 :] + SERVERS[: round_ % 3]
                        line = []
                        for name in order:
                            result = run_wrk(
                                WRK_SCRIPTS / "poll.lua",
                                bases[name],
                                [str(ids_files[kind]), token, str(round_ + 1)],
                                connections=count,
                                seconds=seconds,
                            )
                            case.runs[name].append(result)
                            line.append(f"{LABELS[name]} {result.rps:,.0f}/s")
                            if result.failed:
                                failures.append(
                                    f"{kind} c={count} {LABELS[name]}: {result.failures()}"
                                )
                        print(f"  {kind} c={count} round {round_ + 1}: " + ", ".join(line))
                    cases.append(case)
        finally:
            stop_processes(list(servers.values()))
            asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))

    print()
    print(
        f"Polling `GET /api/jobs/{{id}}`, wrk 1 thread, {seconds} s runs, median of "
        f"{args.rounds} interleaved rounds; requests/s (p50 / p99 latency); ratio of the "
        "medians of requests/s (range of the rounds' ratios)"
    )
    print()
    print(table(cases))
    print()
    print(f"({time.monotonic() - started:.0f} s in all)")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

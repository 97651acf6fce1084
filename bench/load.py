"""Load: steady submissions and wrk's polls against one API process and one consumer process.

    .venv/bin/python bench/load.py [--quick] [--duration 60] [--rate 10] [--connections 50]
                                   [--no-pin] [--busy 0]

Starts its own embedded MongoDB, `medevents api` and `medevents consumer` (each a process of
its own, on exchanges and queues of their own; the example's packages are unsigned: the
consumer runs with SIGNATURE_MODE=decode), then for `--duration` seconds:
- submits `--rate` packages a second over HTTP (the example, with fresh ids), at a steady rate
  whatever the answers' latency, from this process (aiohttp);
- polls the jobs submitted so far with wrk (1 thread, `--connections` connections, no pause;
  `bench/wrk/load.lua`), each poll a random job among those the API accepted.

Why two clients: the point is a mix, submissions at a fixed rate while polls run as fast as
the API answers them. wrk sends as fast as answers come and its Lua cannot make the example's
package with fresh ids and dates (`service.cli.publish.with_new_ids`); a few submissions a
second cost this process little. The polls, the load, are wrk's; this process appends each
accepted job's id to a file that wrk reads as it runs. The load generators (wrk and this
process) run on the last CPU, the service (API, consumer, MongoDB) on the others (`taskset`,
by `os.sched_setaffinity`; on a single CPU, or with `--no-pin`, nothing is pinned). The
service's logs go to files; its warnings and errors are counted and the last ones printed.

Every job the benchmark created must be found: a poll answered 404 (or anything but 200 or
303) is a failure, counted by status by wrk's script. After the load each job is read once
more through the API, with a long poll until it ends (a minute at most): a job the API does
not find, or that is still pending then, is reported as lost. The job times (the server's
`inserted_at` to `updated_at`) are read from MongoDB in one query once every job has ended.
Prints the figures; exits 1 on any failure. `--quick`: 10 s of load. `--busy N`: N processes
spinning on the service's CPUs throughout (an overloaded machine: with 3, the API, the consumer
and MongoDB share a quarter of their CPU); a refused submission (503) is then what to look for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    AMQP_URL,
    WRK_SCRIPTS,
    WrkResult,
    parse_wrk,
    percentile,
    service_env,
    stop_processes,
    wait_up,
    wrk_command,
)
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
# What a poll of a job that exists may be answered: pending or failed (200), processed (303).
POLL_ANSWERS = {200, 303}
DRAIN_SECONDS = 60.0


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """The CPUs of the service and of the load generators: the last one for the generators,
    the others for the service; None, None (no pinning) on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return set(cpus[:-1]), {cpus[-1]}


async def run_load(
    base: str,
    ids_file: Path,
    duration: int,
    rate: float,
    connections: int,
    token: str,
) -> dict[str, Any]:
    """Submissions at `rate` for as long as wrk polls (`duration` seconds, once one job is
    accepted): the accepted job ids, the submissions' latencies and refusals, wrk's result."""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{base}/api/patients/{EXAMPLE['patient_id']}/encounter_package"
    accepted: list[str] = []
    latencies: list[float] = []
    refused: dict[int, int] = {}
    first = asyncio.Event()
    wrk_done = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        with ids_file.open("a") as ids:

            async def submit_one() -> None:
                body = orjson.dumps(with_new_ids(EXAMPLE)["data"])
                started = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as response:
                    payload = await response.read()
                latencies.append(time.perf_counter() - started)
                if response.status != 202:
                    refused[response.status] = refused.get(response.status, 0) + 1
                    return
                href = orjson.loads(payload)["data"]["links"][0]["href"]
                job_id = href.rsplit("/", 1)[-1]
                accepted.append(job_id)
                ids.write(job_id + "\n")
                ids.flush()  # wrk reads the file as it grows
                first.set()

            async def produce() -> None:
                """At a steady rate, whatever the answers' latency: one task per submission."""
                next_at, sending = time.monotonic(), []
                while not wrk_done.is_set():
                    sending.append(asyncio.create_task(submit_one()))
                    next_at += 1 / rate
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                await asyncio.gather(*sending)

            async def poll() -> WrkResult:
                try:
                    async with asyncio.timeout(30):
                        await first.wait()
                    command = wrk_command(
                        WRK_SCRIPTS / "load.lua",
                        base,
                        [str(ids_file), token, "1"],
                        connections=connections,
                        seconds=duration,
                    )
                    wrk = await asyncio.create_subprocess_exec(
                        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                    )
                    out, err = await wrk.communicate()
                    if wrk.returncode != 0:
                        raise RuntimeError(f"wrk failed: {err.decode()}")
                    return parse_wrk(out.decode())
                finally:
                    wrk_done.set()

            polls, _ = await asyncio.gather(poll(), produce())
    return {"accepted": accepted, "latencies": latencies, "refused": refused, "polls": polls}


async def final_states(base: str, job_ids: list[str], token: str) -> dict[str, list[str]]:
    """Each job read through the API once more, long-polled until it ends or `DRAIN_SECONDS`
    pass: the ids by outcome (`processed`, `failed`, `pending`: lost, `not found`: lost,
    `error`: any other answer)."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + DRAIN_SECONDS
    outcome: dict[str, list[str]] = {}
    limit = asyncio.Semaphore(64)

    async with aiohttp.ClientSession() as http:

        async def settle(job_id: str) -> None:
            async with limit:
                state = "pending"
                while time.monotonic() < deadline:
                    wait = max(1, min(30, int(deadline - time.monotonic())))
                    async with http.get(
                        f"{base}/api/jobs/{job_id}?wait={wait}",
                        headers=headers,
                        allow_redirects=False,
                    ) as response:
                        payload = await response.read()
                    if response.status == 404:
                        state = "not found"
                    elif response.status not in POLL_ANSWERS:
                        state = f"error {response.status}"
                    else:
                        state = orjson.loads(payload)["data"]["status"]
                    if state != "pending":
                        break
                outcome.setdefault(state, []).append(job_id)

        await asyncio.gather(*(settle(job_id) for job_id in job_ids))
    return outcome


async def job_times(mongodb_url: str, db_name: str, job_ids: list[str]) -> list[float]:
    """The ended jobs' times, server-side: `inserted_at` to `updated_at` (one query, after)."""
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        return [
            (job["updated_at"] - job["inserted_at"]).total_seconds()
            async for job in client[db_name]["jobs"].find(
                {"_id": {"$in": job_ids}, "status": {"$ne": 0}},
                {"inserted_at": 1, "updated_at": 1},
            )
        ]
    finally:
        await client.close()


async def seed(mongodb_url: str, db_name: str) -> None:
    """The patients and registry records the example refers to (`service.cli.demo`)."""
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url)
    try:
        db = client[db_name]
        await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    finally:
        await client.close()


def report(args: argparse.Namespace, result: dict[str, Any], outcome: dict, times: list) -> int:
    """Prints the figures; the number of failures."""
    polls: WrkResult = result["polls"]
    statuses = {int(status): count for status, count in polls.fields["statuses"].items()}
    accepted = result["accepted"]
    latencies = result["latencies"]
    not_found = statuses.get(404, 0)
    other = {s: c for s, c in statuses.items() if s not in POLL_ANSWERS and s != 404}
    lost = len(outcome.get("pending", [])) + len(outcome.get("not found", []))
    errors = sum(len(ids) for state, ids in outcome.items() if state.startswith("error"))
    socket_errors = {k: v for k, v in polls.errors().items() if k != "status"}
    print(
        f"{args.duration} s of load: {args.rate:g} submissions/s (this process), polls by wrk "
        f"(1 thread, {args.connections} connections)"
        + (f", {args.busy} busy processes on the service's CPUs" if args.busy else "")
    )
    print(
        f"  submissions            {len(latencies)} sent, {len(accepted)} accepted (202), "
        f"refused: {result['refused'] or 'none'}"
    )
    print(
        f"  submission latency     p50 {percentile(latencies, 0.5) * 1000:.1f} / "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    print(f"  polls                  {polls.requests} ({polls.rps:,.0f}/s)")
    print(f"  poll latency           p50 {polls.p50_ms:.1f} / p99 {polls.p99_ms:.1f} ms (wrk)")
    print("  poll answers           " + ", ".join(f"{s}: {c}" for s, c in sorted(statuses.items())))
    print(f"  polls answered 404     {not_found} (every job polled exists: each is a failure)")
    print(f"  other poll failures    {other or 'none'}; socket errors {socket_errors or 'none'}")
    print(
        f"  jobs ended             {len(outcome.get('processed', []))} processed, "
        f"{len(outcome.get('failed', []))} failed"
    )
    print(
        f"  job time               p50 {percentile(times, 0.5) * 1000:.0f} / "
        f"p99 {percentile(times, 0.99) * 1000:.0f} ms (inserted_at to updated_at)"
    )
    print(
        f"  jobs lost              {lost} ({len(outcome.get('not found', []))} not found, "
        f"{len(outcome.get('pending', []))} still pending {DRAIN_SECONDS:.0f} s after the load)"
    )
    for state in ("not found", "pending"):
        for job_id in outcome.get(state, [])[:10]:
            print(f"    {state}: {job_id}")
    failures = (
        not_found
        + sum(other.values())
        + sum(socket_errors.values())
        + lost
        + errors
        + sum(result["refused"].values())
    )
    print(f"  failures               {failures}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s of load")
    parser.add_argument("--duration", type=int, help="seconds of load (default 60; --quick 10)")
    parser.add_argument("--rate", type=float, default=10, help="submissions per second")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections")
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the processes on every CPU (no taskset)"
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="busy processes sharing the service's CPUs (an overloaded machine)",
    )
    args = parser.parse_args()
    args.duration = args.duration or (10 if args.quick else 60)

    prefix = f"load.{uuid.uuid4().hex[:8]}."
    db_name = f"load_{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    medevents = str(Path(sys.executable).parent / "medevents")
    token = mint_token(SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], DEMO_USER, 3600)
    service_cpus, client_cpus = (None, None) if args.no_pin else cpu_split()
    with tempfile.TemporaryDirectory() as data_dir:
        if service_cpus:  # the children inherit it: MongoDB, the API, the consumer
            os.sched_setaffinity(0, service_cpus)
        with EmbeddedMongo(Path(data_dir)) as mongodb_url:
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
            logs = {command: Path(data_dir) / f"{command}.log" for command in ("api", "consumer")}
            processes = [
                subprocess.Popen(
                    [medevents, command],
                    env=env,
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )
                for command, log in logs.items()
            ]
            # Spinning on the service's CPUs (inherited, as MongoDB's, the API's and the
            # consumer's): the service gets a share of them, as on a machine running more.
            busy = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)
            ]
            try:
                if client_cpus:  # this process and wrk, off the service's CPUs
                    os.sched_setaffinity(0, client_cpus)
                print(
                    f"CPUs: service {sorted(service_cpus or [])}, load generators "
                    f"{sorted(client_cpus or [])}"
                    if service_cpus
                    else "CPUs: nothing pinned"
                )
                asyncio.run(wait_up(f"{base}/health/ready"))
                ids_file = Path(data_dir) / "jobs.ids"
                ids_file.touch()
                result = asyncio.run(
                    run_load(base, ids_file, args.duration, args.rate, args.connections, token)
                )
                outcome = asyncio.run(final_states(base, result["accepted"], token))
                times = asyncio.run(job_times(mongodb_url, db_name, result["accepted"]))
            finally:
                for spinner in busy:
                    spinner.kill()
                    spinner.wait()
                stop_processes(processes, timeout=60)
                asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))
            warnings = {command: warning_lines(log) for command, log in logs.items()}
    failures = report(args, result, outcome, times)
    for command, lines in warnings.items():
        if lines:
            print(f"  {command}: {len(lines)} warnings or errors logged; the last:")
            for line in lines[-3:]:
                print(f"    {line[:300]}")
    return 1 if failures else 0


def warning_lines(log: Path) -> list[str]:
    """The lines of a service's JSON log at level warning or above."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            level = orjson.loads(line).get("level")
        except orjson.JSONDecodeError:
            level = "error"  # not the service's log line: a traceback, say
        if level not in ("debug", "info"):
            lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())

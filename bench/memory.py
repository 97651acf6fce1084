"""Memory: the API's resident size over a long run of mixed polls, with its in-memory caches
driven past their bounds and the largest jobs among those kept, which must stay flat.

    .venv/bin/python bench/memory.py [--quick] [--requests 1000000]

`medevents api` (logs at info, to /dev/null) on the embedded MongoDB, polled by `wrk` (one
thread, 32 connections, `bench/wrk/memory_mix.lua`) in runs of a few seconds, the API's RSS
read from /proc during and after each run (nothing asked of the server). The mix,
`GET /api/jobs/{id}`, each with a request id of its own and a token drawn from 20,000 (40,000
with --quick, so that fewer requests pass the bound; the verified-token cache keeps 10,000):
  small     45%  processed jobs with 11 links (the example package's), 303
  error422  10%  422s whose stored error is near the 10,000-byte cap (the largest error)
  links      5%  processed jobs with 501 links (a package with 50 of each entity: the
                 largest response a job can have, about 70 KB), 303
  pending   30%  pending jobs, 20,000 of them (2,000 with --quick), each answered from
                 memory for PENDING_JOB_CACHE_MS after its read (set to its maximum, 10 s:
                 the most the pending polls' memory can hold)
  unknown    5%  ids no job has (404)
  badtoken   5%  an invalid token (401)
Each request draws its job at random among its kind's. The finished jobs' responses weigh
about twice the finished-job cache's bound (FINISHED_JOB_CACHE_BYTES, 64 MiB; 8 MiB with
--quick): once it is full, about half the polls of finished jobs miss, read MongoDB, render
the job and evict the oldest entries; the large jobs hold most of what is kept.
Prints RSS over the run; when the bounds were passed (the finished responses polled, in
bytes, over the cache's bound; the distinct tokens used over the 10,000 kept; and, for the
pending polls' memory, the pending jobs polled within its 10 s against its 8 MiB); the growth
from then to the end, the peak, and the slope of RSS per 100,000 requests over that stretch;
and a check of the finished-job cache at the end (every finished job removed from MongoDB,
then polled once: those still answered are the ones kept in memory, their bytes within the
bound).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import orjson
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from schemas.package_content import MAX_ENTITIES  # noqa: E402
from service.api.auth import VERIFIED_TOKENS_KEPT, mint_token  # noqa: E402
from service.domain.clock import utcnow  # noqa: E402
from service.domain.entities import ENCOUNTER, ENCOUNTER_ENTITY_KINDS  # noqa: E402
from service.domain.jobs import (  # noqa: E402
    MAX_ERROR_BYTES,
    JobOutcome,
    JobStatus,
    Link,
    NewJob,
    entity_href,
    new_job_id,
)
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402
from service.usecases.finished_jobs import DEFAULT_MAX_BYTES  # noqa: E402
from service.usecases.pending_polls import DEFAULT_MAX_BYTES as PENDING_MAX_BYTES  # noqa: E402
from service.usecases.pending_polls import (  # noqa: E402
    ENTRY_OVERHEAD_BYTES as PENDING_ENTRY_OVERHEAD,
)

SECRET = "memory-benchmark-secret-memory-benchmark-se"
CLIENT = "bench-mis"
LUA = ROOT / "bench/wrk/memory_mix.lua"
CONNECTIONS = 32
# The share of each kind of request (`bench/wrk/memory_mix.lua`); "small" first: the bad-token
# polls use its jobs.
MIX = {
    "small": 0.45,
    "error422": 0.10,
    "links": 0.05,
    "pending": 0.30,
    "unknown": 0.05,
    "badtoken": 0.05,
}
FINISHED_KINDS = ("small", "error422", "links")
# The pending polls' memory (`service.usecases.pending_polls`): its longest time, so that the
# jobs polled within it outweigh its bound.
PENDING_KEEP_MS = 10_000
# RSS is called flat when it ends within this share of where it was once the bounds passed.
FLAT_PERCENT = 5
JOB_KINDS = (*FINISHED_KINDS, "pending")


@dataclass(frozen=True)
class Plan:
    requests: int
    jobs: dict[str, int]
    tokens: int
    cache_bytes: int
    segment_seconds: float
    # Load stops at `requests` or after this many seconds, whichever comes first.
    max_seconds: float = math.inf


FULL = Plan(
    requests=1_000_000,
    jobs={"small": 5_000, "error422": 4_000, "links": 1_000, "pending": 20_000},
    tokens=20_000,
    cache_bytes=DEFAULT_MAX_BYTES,
    segment_seconds=15,
)
QUICK = Plan(
    requests=50_000,
    jobs={"small": 600, "error422": 500, "links": 130, "pending": 2_000},
    tokens=40_000,
    cache_bytes=8 * 1024 * 1024,
    segment_seconds=3,
    max_seconds=27,
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# --- The jobs -----------------------------------------------------------------------------


def near_cap_422() -> JobOutcome:
    """A 422 whose stored error is near the 10,000-byte cap: the largest error a job holds."""
    invalid = [
        {
            "entry_type": "json_data_property",
            "entry": f"$.observations.[{n}].code.coding.[0].code",
            "rules": [
                {
                    "rule": "required",
                    "params": [],
                    "description": "required property code was not present",
                }
            ],
        }
        for n in range(400)
    ]
    return JobOutcome.validation_failed(invalid)


def links_of(patient_id: str, per_kind: int) -> list[Link]:
    """An encounter package's links: its encounter, then `per_kind` of each other kind."""
    links = [
        Link(ENCOUNTER.entity, entity_href(patient_id, ENCOUNTER.collection, str(uuid.uuid4())))
    ]
    for kind in ENCOUNTER_ENTITY_KINDS:
        links += [
            Link(kind.entity, entity_href(patient_id, kind.collection, str(uuid.uuid4())))
            for _ in range(per_kind)
        ]
    return links


def outcome_of(kind: str, patient_id: str) -> JobOutcome | None:
    if kind == "small":  # the example package: an encounter and one of each other kind
        return JobOutcome.processed(links_of(patient_id, 1))
    if kind == "error422":
        return near_cap_422()
    if kind == "links":  # the most a package holds: 50 of each kind
        return JobOutcome.processed(links_of(patient_id, MAX_ENTITIES))
    return None  # pending


async def seed(mongodb_url: str, db_name: str, plan: Plan) -> dict[str, list[str]]:
    """The jobs of each kind, inserted as `JobStore` stores them (its indexes, the finishing
    write's fields), in batches."""
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    await JobStore(db).ensure_indexes()
    error = near_cap_422().to_update()["error"]
    assert len(orjson.dumps(error)) > MAX_ERROR_BYTES - 200  # near the cap
    now = utcnow()
    jobs: dict[str, list[str]] = {}
    for kind in JOB_KINDS:
        jobs[kind], batch = [], []
        for _ in range(plan.jobs[kind]):
            job_id, patient_id = new_job_id(), str(uuid.uuid4())
            document = NewJob(
                job_id,
                "encounter_package.create",
                uuid.uuid4().hex,
                CLIENT,
                "bench-user",
                uuid.uuid4().hex,
                now + timedelta(days=1),
                patient_id,
            ).to_document(now)
            outcome = outcome_of(kind, patient_id)
            if outcome is not None:
                document.update(outcome.to_update(), attempts=1)
            batch.append(document)
            jobs[kind].append(job_id)
            if len(batch) == 200:
                await db["jobs"].insert_many(batch)
                batch = []
        if batch:
            await db["jobs"].insert_many(batch)
    await client.close()
    return jobs


# --- Before and after the load ------------------------------------------------------------


async def response_sizes(base: str, jobs: dict[str, list[str]], token: str) -> dict[str, int]:
    """One poll of each kind, checked: its status, and its body's size (what the cache keeps
    is about this, less the envelope's `meta`)."""
    good = {"Authorization": f"Bearer {token}"}
    # A processed job answers 303 See Other (its links in the body, the first in Location).
    expected = {"small": 303, "error422": 200, "links": 303, "pending": 200}
    checks = {kind: (jobs[kind][-1], good, expected[kind]) for kind in JOB_KINDS}
    checks["unknown"] = ("unknown_check", good, 404)
    checks["badtoken"] = (jobs["small"][-1], {"Authorization": "Bearer not.a.token"}, 401)
    sizes = {}
    async with aiohttp.ClientSession() as http:
        for kind, (job_id, headers, expected) in checks.items():
            url = f"{base}/api/jobs/{job_id}"
            async with http.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.read()
                assert response.status == expected, (kind, response.status, body[:300])
                if kind in JOB_KINDS:
                    status = (await response.json())["data"]["status"]
                    assert (status == "pending") == (kind == "pending"), (kind, status)
            sizes[kind] = len(body)
    return sizes


async def kept_finished_jobs(
    mongodb_url: str, db_name: str, base: str, jobs: dict[str, list[str]], token: str
) -> tuple[int, int, int]:
    """Remove every finished job from MongoDB, then poll each once: those still answered are
    the ones the API keeps in memory. Returns how many, their bodies' bytes, and the 404s."""
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    await client[db_name]["jobs"].delete_many({"status": {"$ne": int(JobStatus.PENDING)}})
    await client.close()
    headers = {"Authorization": f"Bearer {token}"}
    kept = kept_bytes = gone = 0
    limit = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def poll(job_id: str) -> None:
            nonlocal kept, kept_bytes, gone
            url = f"{base}/api/jobs/{job_id}"
            async with limit, http.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.read()
            if response.status in (200, 303):
                kept, kept_bytes = kept + 1, kept_bytes + len(body)
            else:
                assert response.status == 404, response.status
                gone += 1

        await asyncio.gather(*(poll(job_id) for kind in FINISHED_KINDS for job_id in jobs[kind]))
    return kept, kept_bytes, gone


# --- The load -----------------------------------------------------------------------------


@dataclass
class Progress:
    """What the wrk runs have done so far."""

    requests: int = 0
    non_2xx: int = 0
    errors: int = 0
    seconds: float = 0.0
    pending_rate: float = 0.0  # pending polls per second in the last run
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MIX, 0))


WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def run_wrk(
    base: str, data_file: Path, seconds: float, progress: Progress, api_pid: int, seed: int
) -> list[float]:
    """One wrk run of `seconds`; returns the RSS samples taken during it (every half
    second, from /proc: nothing asked of the server)."""
    command = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        base,
        "--",
        str(data_file),
        str(seed),
    ]
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []
    while wrk.poll() is None:
        samples.append(rss_mib(api_pid))
        time.sleep(0.5)
    output = wrk.stdout.read() if wrk.stdout else ""
    if wrk.returncode != 0 or not (done := WRK_REQUESTS.search(output)):
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{output}")
    progress.requests += int(done.group(1))
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0}.get(done.group(3), 1.0)
    progress.seconds += float(done.group(2)) * unit
    if non_2xx := WRK_NON_2XX.search(output):
        progress.non_2xx += int(non_2xx.group(1))
    if errors := WRK_SOCKET_ERRORS.search(output):
        progress.errors += sum(int(count) for count in errors.groups())
    pending_before = progress.sent["pending"]
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "sent":
            progress.sent[parts[1]] += int(parts[2])
    progress.pending_rate = (progress.sent["pending"] - pending_before) / seconds
    return samples


def distinct(draws: float, population: int) -> float:
    """The expected number of distinct items among `draws` uniform draws from `population`."""
    return population * (1 - math.exp(-draws / population))


def bounds_passed(progress: Progress, plan: Plan, sizes: dict[str, int]) -> tuple[bool, str]:
    """Whether the distinct finished jobs polled so far weigh more than the cache's bound,
    and the distinct tokens used outnumber the tokens kept. Both are drawn at random: `n`
    draws among `N` give `N (1 - e^(-n/N))` distinct ones, expected."""
    polled_bytes = sum(
        distinct(progress.sent[kind], plan.jobs[kind]) * sizes[kind] for kind in FINISHED_KINDS
    )
    good_token_requests = progress.requests * (1 - MIX["badtoken"])
    tokens_used = distinct(good_token_requests, plan.tokens)
    # The pending jobs polled within the pending polls' time, at the last run's rate, each
    # counted as the pending memory counts it (its body, less than the response, + overhead).
    pending = min(progress.pending_rate * PENDING_KEEP_MS / 1000, plan.jobs["pending"])
    pending_bytes = pending * (sizes["pending"] + PENDING_ENTRY_OVERHEAD)
    passed = polled_bytes > plan.cache_bytes and tokens_used > VERIFIED_TOKENS_KEPT
    summary = (
        f"finished responses polled {polled_bytes / 2**20:.0f} MiB (bound "
        f"{plan.cache_bytes / 2**20:.0f} MiB), distinct tokens ~{tokens_used:,.0f} "
        f"(kept {VERIFIED_TOKENS_KEPT:,}), pending jobs polled within "
        f"{PENDING_KEEP_MS / 1000:g} s ~{pending:,.0f}, ~{pending_bytes / 2**20:.1f} MiB "
        f"(bound {PENDING_MAX_BYTES / 2**20:.0f} MiB)"
    )
    return passed, summary


def slope_per_100k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) against requests, per 100,000 requests."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return float("nan")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread * 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--requests", type=int, help="requests in all (default: by mode)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.requests:
        plan = dataclasses.replace(plan, requests=args.requests)
    db_name = f"mem_{uuid.uuid4().hex[:8]}"
    prefix = f"mem.{uuid.uuid4().hex[:8]}."
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as mongodb_url:
        jobs = asyncio.run(seed(mongodb_url, db_name, plan))
        tokens = [
            mint_token(SECRET, CLIENT, ["job:read"], f"user-{n}", 7200) for n in range(plan.tokens)
        ]
        data_file = Path(data_dir) / "mix.txt"
        lines = [f"mix {kind} {share}" for kind, share in MIX.items()]
        lines += [f"token {token}" for token in tokens]
        for kind in JOB_KINDS:
            shuffled = jobs[kind][:]
            random.shuffle(shuffled)
            lines += [f"{kind} {job_id}" for job_id in shuffled]
        data_file.write_text("\n".join(lines) + "\n")
        counts = ", ".join(f"{plan.jobs[kind]:,} {kind}" for kind in JOB_KINDS)
        print(
            f"seeded {counts} and minted {plan.tokens:,} tokens in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )

        port = free_port()
        env = service_env(
            mongodb_url,
            db_name,
            prefix,
            SECRET,
            data_dir,
            HTTP_PORT=str(port),
            LOG_LEVEL="info",
            FINISHED_JOB_CACHE_BYTES=str(plan.cache_bytes),
            PENDING_JOB_CACHE_MS=str(PENDING_KEEP_MS),
        )
        api = start_medevents("api", env)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_up(f"{base}/health/live"))
            sizes = asyncio.run(response_sizes(base, jobs, tokens[0]))
            print(
                "response bytes: "
                + ", ".join(f"{kind} {size:,}" for kind, size in sizes.items())
                + f"; at start RSS {rss_mib(api.pid):.1f} MiB",
                flush=True,
            )
            limit = f"{plan.requests:,} requests" + (
                f" or {plan.max_seconds:g} s" if math.isfinite(plan.max_seconds) else ""
            )
            print(
                f"{limit} (wrk -t1 -c{CONNECTIONS}, runs of {plan.segment_seconds:g} s); "
                "RSS of `medevents api` in MiB"
            )
            print(f"  {'requests':>10} {'seconds':>7} {'RSS end':>8} {'run peak':>8} {'req/s':>7}")
            progress = Progress()
            points: list[tuple[int, float]] = []
            peaks: list[float] = []
            passed_at: int | None = None
            run = 0
            while progress.requests < plan.requests and progress.seconds < plan.max_seconds:
                before = progress.requests
                samples = run_wrk(
                    base, data_file, plan.segment_seconds, progress, api.pid, seed=run + 1
                )
                run += 1
                rss = rss_mib(api.pid)
                points.append((progress.requests, rss))
                peaks.append(max([rss, *samples]))
                rate = (progress.requests - before) / plan.segment_seconds
                passed, summary = bounds_passed(progress, plan, sizes)
                note = ""
                if passed and passed_at is None:
                    passed_at, note = progress.requests, "  <- bounds passed: " + summary
                print(
                    f"  {progress.requests:>10,} {progress.seconds:>7.0f} {rss:>8.1f} "
                    f"{peaks[-1]:>8.1f} {rate:>7,.0f}{note}",
                    flush=True,
                )
            _, summary = bounds_passed(progress, plan, sizes)
            share = progress.non_2xx / progress.requests
            print(f"at the end: {summary}")
            print(
                f"non-2xx {share:.1%} (the mix's 404s and 401s: 10%), socket errors "
                f"{progress.errors}; sent by kind: "
                + ", ".join(f"{kind} {count:,}" for kind, count in progress.sent.items())
            )
            # Flat from where the bounds were passed, or from the warm-up (5%) if later.
            start_at = max(passed_at or progress.requests, progress.requests // 20)
            after = [(count, rss) for count, rss in points if count >= start_at]
            if passed_at is None or len(after) < 2:
                print("the bounds were not passed early enough to judge: run more requests")
            else:
                first, final = after[0][1], after[-1][1]
                growth = (final - first) / first * 100
                peak = max(
                    peak
                    for (count, _), peak in zip(points, peaks, strict=True)
                    if count >= start_at
                )
                print(
                    f"from {after[0][0]:,} requests (bounds passed at {passed_at:,}) to the end: "
                    f"RSS {first:.1f} -> {final:.1f} MiB, growth {growth:+.1f}%, peak "
                    f"{peak:.1f} MiB ({(peak - first) / first * 100:+.1f}%), slope "
                    f"{slope_per_100k(after):+.2f} MiB per 100,000 requests: "
                    + ("flat" if abs(growth) <= FLAT_PERCENT else "NOT flat")
                    + f" (within {FLAT_PERCENT}%)"
                )
            kept, kept_bytes, gone = asyncio.run(
                kept_finished_jobs(mongodb_url, db_name, base, jobs, tokens[0])
            )
            print(
                f"the cache at the end: {kept:,} finished jobs still answered after their "
                f"removal from MongoDB ({kept_bytes / 2**20:.1f} MiB of bodies, bound "
                f"{plan.cache_bytes / 2**20:.0f} MiB), {gone:,} gone (evicted); "
                f"RSS {rss_mib(api.pid):.1f} MiB; {time.monotonic() - started:.0f} s in all"
            )
        finally:
            api.terminate()
            api.wait(timeout=30)
            asyncio.run(delete_topology(AMQP_URL, Topology(prefix)))


if __name__ == "__main__":
    main()

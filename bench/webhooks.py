"""The webhook dispatcher: deliveries per second to a local receiver against bare senders, and
job throughput with a receiver that hangs, all measured in one run.

    .venv/bin/python bench/webhooks.py [--quick] [--rounds 3] [--deliveries 3000] [--jobs 600]
        [--endpoints 8 1] [--before COPY] [--profile FILE] [--parts 12] [--cases ...]

Everything is a process of its own, on uvloop: the receiver (`bench/webhooks_receiver.py`,
verifying every signature, answering 204), `medevents webhooks`, `medevents consumer`, and the
baselines (`bench/webhooks_bare.py`); the embedded MongoDB server (or MONGODB_URL); the shared
RabbitMQ, under a prefix of the run's own (deleted at the end). Endpoints are registered
through the API (`POST /api/webhooks`, WEBHOOK_ALLOW_INSECURE=1 for http://127.0.0.1). Every
figure is taken at the receiver (arrival times; a job's end is its event's `timestamp`), so
nothing measures by querying the servers under test. Cases are interleaved, their order
rotated each round; medians of the rounds, and the ratios of the medians.

1. Deliveries per second (a backlog): D events of processed jobs (11 links) are queued through
   the service's own `WebhookNotifier.job_ended`, then the sender starts; deliveries/s from the
   first delivery received to the last. Senders, each with `WEBHOOK_PREFETCH` (32) at once:
     ours       `medevents webhooks` (endpoint read, signing, attempt recorded, per-endpoint
                cap WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT = 4)
     bare-amqp  an aio-pika consumer of the same queue that signs, POSTs and acks (no MongoDB)
     bare-http  an aiohttp client POSTing the same bodies, signed, 32 at once (the framework)
   with 8 endpoints (32 / 4: the cap need not bind) and with 1 (the cap binds).
   (with 1 endpoint, at most 500 events: it drains slowly, see the report).
2. A hanging receiver: M example packages, queued first, processed by `medevents consumer`
   (11 entities, SIGNATURE_MODE=decode) with `medevents webhooks` beside it: with no endpoint,
   one healthy endpoint, a second healthy one (not in --quick), and the healthy one beside a
   hanging one (accepts, reads the request, never answers). Jobs/s from the first job's end to
   the last's, heard on the consumer's `finished` events exchange (the one the API's long
   polls use); the healthy endpoint's deliveries/s and its latency from job end (its event's
   `timestamp`) to arrival (p50, p99); the attempts the hanging one received; the deferrals
   (counted in `medevents webhooks`' log after it stopped). `--quick` shortens
   WEBHOOK_TIMEOUT_SECONDS to 1 s and the schedule to 0.5,1 s, so that a run of seconds spans
   several timeouts and deferrals (ten times the default's churn per second: pessimistic);
   the default mode keeps the defaults (10 s; 5,30,300,... s).

`--before COPY` (a copy of service/, consumers/, schemas/ from before a change) adds that
code's `medevents webhooks` as one more sender and one more hanging case; `--profile FILE`
records the first webhooks process (of COPY when given) with py-spy (raw, collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from aiohttp import web
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, percentile, service_env, wait_up  # noqa: E402
from consumers.processors import builtin_registry  # noqa: E402
from schemas.webhooks import WEBHOOK_EVENT, event_type_of  # noqa: E402
from service.api.app import create_app  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.bootstrap import Services  # noqa: E402
from service.cli.demo import write_demo_records  # noqa: E402
from service.cli.publish import with_new_ids  # noqa: E402
from service.config import Settings  # noqa: E402
from service.domain.clock import utcnow  # noqa: E402
from service.domain.jobs import JobOutcome, Link, new_job_id  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.messaging.job_events import declare_events_exchange  # noqa: E402
from service.messaging.publisher import SubmissionPublisher  # noqa: E402
from service.messaging.webhooks import WebhookTopology, delete_webhook_topology  # noqa: E402
from service.observability.logs import configure_logging  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.entities import EntityStore  # noqa: E402
from service.storage.patients import PatientStore  # noqa: E402
from service.storage.registries import RegistryStore  # noqa: E402
from service.usecases.webhooks import webhook_id_of  # noqa: E402

SECRET = "webhooks-benchmark-secret-webhooks-benchmark"
EXAMPLE = orjson.loads((ROOT / "examples/encounter_package.json").read_bytes())
CLIENT = EXAMPLE["requested_by"]["client_id"]
EVENTS = ["job.processed", "job.failed"]
PREFETCH = 32  # WEBHOOK_PREFETCH's default
DEFAULT_SCHEDULE = (5.0, 30.0, 300.0, 1800.0, 7200.0)
QUICK_SCHEDULE = (0.5, 1.0)


@dataclass
class Context:
    mongodb_url: str
    receiver: str  # http://127.0.0.1:PORT
    data_dir: str
    quick: bool
    mongo: AsyncMongoClient
    # py-spy's output of the first webhooks process of `before` (when given), else of ours
    profile: str | None = None
    before: str | None = None  # a copy of the packages before a change: also measured
    prefixes: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)

    @property
    def schedule(self) -> tuple[float, ...]:
        return QUICK_SCHEDULE if self.quick else DEFAULT_SCHEDULE

    def webhook_env(self) -> dict[str, str]:
        env = {"WEBHOOK_ALLOW_INSECURE": "1", "WEBHOOK_PREFETCH": str(PREFETCH)}
        if self.quick:
            env["WEBHOOK_TIMEOUT_SECONDS"] = "1"
            env["WEBHOOK_RETRY_SCHEDULE"] = ",".join(str(s) for s in QUICK_SCHEDULE)
        return env


@dataclass
class Endpoint:
    id: str
    name: str  # the receiver's name for it
    url: str
    secret: str


class Fresh:
    """A database and an AMQP prefix of their own, for one measured run; dropped after it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        tag = uuid.uuid4().hex[:10]
        self.db_name = f"bench_wh_{tag}"
        self.prefix = f"bench.wh.{tag}."
        self.names = f"r{tag}"
        self.processes: list[subprocess.Popen] = []
        self.spies: list[subprocess.Popen] = []
        ctx.prefixes.append((self.prefix, ctx.schedule))
        self.settings = Settings.from_env().with_changes(
            mongodb_url=ctx.mongodb_url,
            mongodb_db=self.db_name,
            amqp_url=AMQP_URL,
            amqp_prefix=self.prefix,
            jwt_secret=SECRET,
            log_level="warning",
            webhook_allow_insecure=True,
            webhook_endpoint_cache_seconds=0,
            webhook_retry_schedule=ctx.schedule,
        )

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(
            self.ctx.mongodb_url,
            self.db_name,
            self.prefix,
            SECRET,
            self.ctx.data_dir,
            LOG_LEVEL="info",  # the service's default: one line per attempt, as in production
            SIGNATURE_MODE="decode",
            **self.ctx.webhook_env(),
            **extra,
        )

    def start(self, command: str, tree: str | None = None) -> None:
        """`medevents COMMAND`; of the code in `tree` (a copy of the repository's packages,
        e.g. before a change) when given."""
        log = (Path(self.ctx.data_dir) / f"{self.names}-{command}.log").open("wb")
        if tree is None:
            argv = [str(Path(sys.executable).parent / "medevents"), command]
        else:
            argv = [sys.executable, "-m", "service.cli.main", command]
        process = subprocess.Popen(
            argv,
            cwd=tree,
            env=self.env(PYTHONPATH=tree) if tree else self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        if command == "webhooks" and self.ctx.profile and tree == self.ctx.before:
            spy = str(Path(sys.executable).parent / "py-spy")
            output, self.ctx.profile = self.ctx.profile, None
            rate = ["--nonblocking", "-r", "200", "-f", "raw"]
            self.processes.insert(  # stopped first (SIGINT: it writes its output)
                0,
                spy_process := subprocess.Popen(
                    [spy, "record", *rate, "-o", output, "--pid", str(process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
            self.spies.append(spy_process)

    def logged(self, command: str, event: str) -> int:
        """Lines of `event` in the log of `medevents COMMAND` (read after it stopped)."""
        path = Path(self.ctx.data_dir) / f"{self.names}-{command}.log"
        markers = (f'"event": "{event}"'.encode(), f'"event":"{event}"'.encode())
        with path.open("rb") as lines:
            return sum(1 for line in lines if any(m in line for m in markers))

    def start_bare(self, mode: str, plan: dict) -> None:
        path = Path(self.ctx.data_dir) / f"{self.names}-{mode}.json"
        path.write_bytes(orjson.dumps(plan))
        script = str(ROOT / "bench/webhooks_bare.py")
        self.processes.append(subprocess.Popen([sys.executable, script, mode, str(path)]))

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT if process in self.spies else signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []

    async def close(self) -> None:
        await self.stop()
        await self.ctx.mongo.drop_database(self.db_name)
        await clean_broker(self.prefix, self.ctx.schedule)
        self.ctx.prefixes.remove((self.prefix, self.ctx.schedule))
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{self.ctx.receiver}/state") as response:
                await response.read()


async def clean_broker(prefix: str, schedule: tuple[float, ...]) -> None:
    await delete_topology(AMQP_URL, Topology(prefix))
    await delete_webhook_topology(AMQP_URL, WebhookTopology(prefix), schedule)


async def register(run: Fresh, paths: list[str]) -> list[Endpoint]:
    """Endpoints `{receiver}/{path}` registered through the API (in this process, on a port of
    its own, closed after), each secret given to the receiver."""
    app = create_app(Services(run.settings, builtin_registry()))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = f"http://127.0.0.1:{runner.addresses[0][1]}"
    token = mint_token(SECRET, CLIENT, ["webhook:write"], "bench", 3600)
    endpoints = []
    try:
        async with aiohttp.ClientSession() as http:
            for path in paths:
                url = f"{run.ctx.receiver}/{path}"
                async with http.post(
                    f"{api}/api/webhooks",
                    json={"url": url, "events": EVENTS},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    body = await response.json()
                    if response.status != 201:
                        raise RuntimeError(f"registration answered {response.status}: {body}")
                data = body["data"]
                name = path.split("/", 1)[1]
                endpoints.append(Endpoint(data["id"], name, url, data["secret"]))
                async with http.put(
                    f"{run.ctx.receiver}/secrets/{name}", data=data["secret"]
                ) as answer:
                    await answer.read()
    finally:
        await runner.cleanup()
    return endpoints


async def received(ctx: Context, name: str, count: int, within_s: float) -> dict[str, Any]:
    """Once `name` received `count` deliveries (a long poll), its report."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within_s + 30)) as http:
        async with http.get(
            f"{ctx.receiver}/wait/{name}", params={"count": count, "timeout": within_s}
        ) as response:
            got = (await response.json())["received"]
        async with http.get(f"{ctx.receiver}/report/{name}") as response:
            report = orjson.loads(await response.read())
    if got < count:
        raise RuntimeError(f"{name}: {got} of {count} deliveries within {within_s} s")
    if report["bad_signatures"]:
        raise RuntimeError(f"{name}: {report['bad_signatures']} bad signatures")
    return report


def processed_job() -> dict[str, Any]:
    now = utcnow()
    links = [Link("encounter", f"/api/patients/p/encounters/{uuid.uuid4()}") for _ in range(11)]
    return {
        "_id": new_job_id(),
        "type": "encounter_package.create",
        "client_id": CLIENT,
        "eta": now,
        "inserted_at": now,
        "updated_at": now,
        **JobOutcome.processed(links).to_update(),
    }


async def in_batches(calls: list[Callable[[], Awaitable[Any]]], size: int = 100) -> None:
    for start in range(0, len(calls), size):
        await asyncio.gather(*(call() for call in calls[start : start + size]))


# --- 1. deliveries per second ---


async def delivery_run(
    ctx: Context, sender: str, endpoints: int, deliveries: int
) -> tuple[float, int]:
    """Deliveries/s, and the deliveries deferred (an endpoint at its cap) by ours."""
    run = Fresh(ctx)
    try:
        registered = await register(run, [f"hook/{run.names}-{i}" for i in range(endpoints)])
        jobs = [processed_job() for _ in range(deliveries // endpoints)]
        if sender == "bare-http":
            plan = []
            for job in jobs:
                body = orjson.dumps(
                    WEBHOOK_EVENT.dump(
                        {"type": event_type_of(job), "timestamp": job["updated_at"], "job": job}
                    )
                ).decode()
                for e in registered:
                    plan.append([e.url, e.secret, webhook_id_of(job["_id"], e.id), body])
            run.start_bare("http", {"concurrency": PREFETCH, "deliveries": plan})
        else:
            async with Services(run.settings, builtin_registry()) as services:
                notifier = services.webhook_notifier
                await in_batches([lambda job=job: notifier.job_ended(job) for job in jobs])
            if sender == "ours":
                run.start("webhooks")
            elif sender == "ours-before":
                run.start("webhooks", ctx.before)
            else:
                run.start_bare(
                    "amqp",
                    {
                        "amqp_url": AMQP_URL,
                        "queue": WebhookTopology(run.prefix).queue,
                        "prefetch": PREFETCH,
                        "count": len(jobs) * endpoints,
                        "endpoints": {e.id: [e.url, e.secret] for e in registered},
                    },
                )
        limit = 60 if ctx.quick else 300
        arrivals = []
        for e in registered:
            report = await received(ctx, e.name, len(jobs), limit)
            arrivals += [d[0] for d in report["deliveries"]]
        await run.stop()
        deferred = run.logged("webhooks", "webhook_deferred") if sender.startswith("ours") else 0
        return (len(arrivals) - 1) / (max(arrivals) - min(arrivals)), deferred
    finally:
        await run.close()


# --- 2. a hanging receiver ---


@dataclass
class JobsRun:
    jobs_per_s: float
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    hanging: int  # attempts the hanging endpoint received
    deferred: int  # deliveries deferred (an endpoint at its cap)


HANGING_CASES = {
    "no endpoint": [],
    "one healthy": ["hook/{n}-ok"],
    "healthy + healthy": ["hook/{n}-ok", "hook/{n}-ok2"],
    "healthy + hanging": ["hook/{n}-ok", "hang/{n}-hang"],
}


BEFORE = " (before)"


class FinishedJobs:
    """When each job ended, as the consumer announces it (the `finished` fanout exchange the
    API's long polls listen to: one message per few jobs), heard on a queue of this process:
    jobs are counted without asking MongoDB, in every case alike."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.at: dict[str, float] = {}
        self.all_done = asyncio.Event()
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def listen(self, prefix: str) -> None:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel()
        exchange = await declare_events_exchange(channel, Topology(prefix))
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._heard, no_ack=True)

    async def _heard(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.time()
        event = orjson.loads(message.body)
        for job_id in event.get("job_ids") or [event["job_id"]]:
            self.at.setdefault(job_id, now)
        if len(self.at) >= self.count:
            self.all_done.set()

    def per_second(self) -> float:
        return (len(self.at) - 1) / (max(self.at.values()) - min(self.at.values()))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def jobs_run(ctx: Context, case: str, count: int) -> JobsRun:
    """`case`: one of HANGING_CASES, "(before)" after it: `medevents webhooks` of --before."""
    before = case.endswith(BEFORE)
    case = case.removesuffix(BEFORE)
    run = Fresh(ctx)
    finished = FinishedJobs(count)
    try:
        db = ctx.mongo[run.db_name]
        await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
        paths = [p.format(n=run.names) for p in HANGING_CASES[case]]
        if paths:
            await register(run, paths)
        # The jobs queued first, then the consumer and the webhooks started: the publisher
        # takes no CPU while they run.
        publisher = SubmissionPublisher(AMQP_URL, Topology(run.prefix))
        submissions = [with_new_ids(EXAMPLE) for _ in range(count)]
        try:
            await in_batches(
                [lambda s=s: publisher.publish(s, new_job_id(), None) for s in submissions], 50
            )
        finally:
            await publisher.close()
        await finished.listen(run.prefix)
        run.start("consumer")
        run.start("webhooks", ctx.before if before else None)
        within = 60 if ctx.quick else 300
        async with asyncio.timeout(within):
            await finished.all_done.wait()
        report = None
        if paths:
            report = await received(ctx, f"{run.names}-ok", count, within)
        hanging = 0
        if case == "healthy + hanging":
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{ctx.receiver}/report/{run.names}-hang") as response:
                    hanging = (await response.json())["hanging"]
        await run.stop()
        if report is None:
            return JobsRun(finished.per_second(), math.nan, math.nan, math.nan, 0, 0)
        arrived = [d[0] for d in report["deliveries"]]
        ended = [d[1] for d in report["deliveries"]]
        latencies = [(a - e) * 1000 for a, e in zip(arrived, ended, strict=True)]
        return JobsRun(
            finished.per_second(),
            (count - 1) / (max(arrived) - min(arrived)),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            hanging,
            run.logged("webhooks", "webhook_deferred"),
        )
    finally:
        await finished.close()
        await run.close()


# --- the run ---


def rotated(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


async def main(args: argparse.Namespace, mongodb_url: str, data_dir: str) -> None:
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/webhooks_receiver.py"), str(port)]
    )
    ctx = Context(
        mongodb_url,
        f"http://127.0.0.1:{port}",
        data_dir,
        args.quick,
        AsyncMongoClient(mongodb_url, tz_aware=True),
        args.profile,
        args.before,
    )
    started = time.monotonic()
    try:
        await wait_up(f"{ctx.receiver}/report/up")
        print(
            f"{os.cpu_count()} CPUs; receiver: aiohttp on uvloop verifying every signature;"
            f" {args.rounds} round(s), cases interleaved, medians"
        )
        senders = ["ours", "bare-amqp", "bare-http"] + (["ours-before"] if args.before else [])
        per_endpoints: dict[int, dict[str, list[float]]] = {}
        deferrals: defaultdict[tuple[int, str], list[int]] = defaultdict(list)
        for endpoints in args.endpoints if "1" in args.parts else []:
            rates: dict[str, list[float]] = {s: [] for s in senders}
            for round_ in range(args.rounds):
                for sender in rotated(senders, round_):
                    # One endpoint drains at most its cap at once: a smaller backlog.
                    count = args.deliveries if endpoints > 1 else min(args.deliveries, 500)
                    rate, deferred = await delivery_run(ctx, sender, endpoints, count)
                    rates[sender].append(rate)
                    deferrals[(endpoints, sender)].append(deferred)
            per_endpoints[endpoints] = rates
        if per_endpoints:
            print(
                f"\n1. Deliveries/s, a backlog of {args.deliveries} events, {PREFETCH} at once"
                " (first delivery received to last)\n"
            )
            before = ["ours-before"] if args.before else []
            head = ["endpoints", "ours", *before, "bare-amqp", "bare-http"]
            head += [f"{s} / {b}" for s in ["ours", *before] for b in ("bare-amqp", "bare-http")]
            print("| " + " | ".join(head) + " |")
            print("|---" * len(head) + "|")
            for endpoints, rates in per_endpoints.items():
                med = {s: statistics.median(v) for s, v in rates.items()}
                cells = [str(endpoints)]
                cells += [f"{med[s]:,.0f}/s" for s in ["ours", *before, "bare-amqp", "bare-http"]]
                cells += [
                    f"{med[s] / med[b]:.2f}"
                    for s in ["ours", *before]
                    for b in ("bare-amqp", "bare-http")
                ]
                print("| " + " | ".join(cells) + " |")
                each = {s: [round(r) for r in v] for s, v in rates.items()}
                deferred = {s: deferrals[(endpoints, s)] for s in ["ours", *before]}
                print(f"<!-- each round: {each}; deferred (cap reached): {deferred} -->")

        if "2" not in args.parts:
            return
        cases = [c for c in HANGING_CASES if not (args.quick and c == "healthy + healthy")]
        cases += ["healthy + hanging" + BEFORE] if args.before else []
        cases = [c for c in cases if not args.cases or c in args.cases]
        results: dict[str, list[JobsRun]] = {c: [] for c in cases}
        for round_ in range(args.rounds):
            for case in rotated(cases, round_):
                results[case].append(await jobs_run(ctx, case, args.jobs))
        settings = "timeout 1 s, schedule 0.5,1 s" if ctx.quick else "defaults: timeout 10 s"
        print(
            f"\n2. {args.jobs} example packages through `medevents consumer`, `medevents"
            f" webhooks` beside it ({settings}); jobs/s / no endpoint's, deliveries/s and"
            " latency / one healthy endpoint's\n"
        )
        print(
            "| endpoints | jobs/s | healthy deliveries/s | job end to delivery p50 / p99"
            " | attempts at the hanging one | deferred | jobs/s ratio | deliveries/s ratio |"
        )
        print("|---|---|---|---|---|---|---|---|")

        def median(case: str, name: str) -> float:
            if case not in results:
                return math.nan
            return statistics.median(getattr(r, name) for r in results[case])

        def cell(value: float, form: str) -> str:
            return "n/a" if math.isnan(value) else format(value, form)

        base = median("no endpoint", "jobs_per_s")
        base_d = median("one healthy", "deliveries_per_s")
        for case in results:
            jobs, delivered = median(case, "jobs_per_s"), median(case, "deliveries_per_s")
            print(
                f"| {case} | {jobs:.1f} | {cell(delivered, '.1f')}"
                f" | {cell(median(case, 'p50_ms'), '.0f')} / {cell(median(case, 'p99_ms'), '.0f')}"
                f" ms | {median(case, 'hanging'):.0f} | {median(case, 'deferred'):.0f}"
                f" | {cell(jobs / base, '.2f')} | {cell(delivered / base_d, '.2f')} |"
            )
        hang = "healthy + hanging"
        for a, b in ((hang, "healthy + healthy"), (hang, "no endpoint")):
            if a not in results or b not in results:
                continue
            pairs = zip(results[a], results[b], strict=True)
            each = [x.jobs_per_s / y.jobs_per_s for x, y in pairs]
            print(f"\njobs/s, {a} / {b}, each round: {', '.join(f'{r:.2f}' for r in each)}")
        print(f"\n(whole run: {time.monotonic() - started:.0f} s)")
    finally:
        for prefix, schedule in ctx.prefixes:
            with contextlib.suppress(Exception):
                await clean_broker(prefix, schedule)
        receiver.terminate()
        receiver.wait()
        await ctx.mongo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    parser.add_argument(
        "--deliveries", type=int, help="per run (default 3000, 500 to 1 endpoint; --quick: 400)"
    )
    parser.add_argument("--jobs", type=int, help="per run (default 600; --quick: 80)")
    parser.add_argument("--endpoints", type=int, nargs="+", help="default 8 1 (--quick: 8)")
    parser.add_argument(
        "--profile", help="py-spy (raw) of the first webhooks process (of --before if given)"
    )
    parser.add_argument("--parts", default="12", help="1: deliveries/s, 2: a hanging receiver")
    parser.add_argument("--cases", nargs="+", help="part 2's cases to run (default: all)")
    parser.add_argument(
        "--before", help="a copy of service/, consumers/, schemas/ before a change: measured too"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("json", "warning")  # this process's own (the notifier's, the API's)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.deliveries = args.deliveries or (400 if args.quick else 3000)
    args.jobs = args.jobs or (80 if args.quick else 600)
    args.endpoints = args.endpoints or ([8] if args.quick else [8, 1])
    settings = Settings.from_env()
    if settings.mongodb_url:
        asyncio.run(main(args, settings.mongodb_url, tempfile.mkdtemp()))
    else:
        with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as url:
            asyncio.run(main(args, url, data_dir))

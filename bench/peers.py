"""Peers: our service against Celery and Dramatiq doing the same work, in one run.

    .venv/bin/python bench/peers.py [--quick] [--jobs N] [--rounds R]

Needs RabbitMQ (`scripts/ensure-rabbitmq`), Redis at REDIS_URL (default
redis://127.0.0.1:6379/0, `scripts/ensure-bench-tools` starts it) and wrk.

The same work: every system processes the example encounter package (11 entities and its
visit, unsigned, fresh ids per job) with our own code, `SubmissionProcessor.process` (decode
the envelope, validate with the same schemas, the patient and registry reads, the same writes
to MongoDB, into collections with the same indexes):
  ours      `medevents consumer` (a process of its own, prefetch 16), fed by publishing
            submissions as `medevents publish` does (`SubmissionPublisher`, confirms); status
            read with `GET /api/jobs/{id}` on `medevents api` (a process of its own)
  celery    a Celery 5 task: RabbitMQ broker (py-amqp, confirms), MongoDB result backend;
            1 worker process, threads pool, concurrency 16, prefetch multiplier 1, acks late;
            status read with `AsyncResult(id).state`
  dramatiq  a Dramatiq 2 actor: RabbitMQ broker (pika, confirms), Redis result backend (its
            `Results` middleware); 1 worker process, 16 threads, prefetch 16;
            status read with `message.get_result(block=False)`
The peers' tasks run our asynchronous processing on one uvloop loop per worker process
(`bench/peers_tasks.py`). One MongoDB server for all (the embedded nx-27017, or MONGODB_URL),
a database of its own per system and round, dropped after; queues of their own, deleted after.

Lines, each the median over the rounds (the order of the systems rotates every round):
  jobs/s       N submissions sent at once; N / (last terminal - first submission)
  burst p50/p99, paced p50/p99   submission -> terminal, of those N, and of jobs sent one
               at a time at PACED_RATE/s (no queue: the time of one job)
  reads/s      status reads of finished jobs and of pending ones, PYTHON_CONCURRENCY at once
               for SECONDS, each system from a Python client in this process (ours: aiohttp;
               the peers' calls are synchronous: threads); and ours with wrk (same
               concurrency), apart: the peers have no HTTP side to drive
  cpu ms/job   CPU time per job of the burst: of the system's own processes (ours: the
               consumer and the API; a peer: its worker), and of the MongoDB server (the
               embedded one only). Less sensitive than the rates to other load on the machine
Every client sends one submission at a time, each confirmed by the broker before the next.
Terminal: when the write that makes the state terminal was made, as each system records it:
ours the job's `updated_at` (set by the server in the finishing update), Celery's `date_done`
(taken as it stores the result), Dramatiq's actor returns the time as it ends (the Results
middleware stores it next). Submission: the time just before the publish. Nothing polls the
server during the jobs but one read of the last job submitted every 50 ms (the same for all).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pika
import redis
import uvloop
from pymongo import AsyncMongoClient, MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    AMQP_URL,
    WRK_SCRIPTS,
    percentile,
    run_wrk,
    service_env,
    stop_processes,
    wait_up,
)
from bench.peers_tasks import CONCURRENCY, NAMESPACE, REDIS_URL, worker_environment  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.cli.demo import write_demo_records  # noqa: E402
from service.cli.publish import with_new_ids  # noqa: E402
from service.config import Settings  # noqa: E402
from service.domain.jobs import NewJob, new_job_id  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.messaging.publisher import SubmissionPublisher  # noqa: E402
from service.messaging.webhooks import WebhookTopology, delete_webhook_topology  # noqa: E402
from service.observability.logs import configure_logging  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.entities import EntityStore  # noqa: E402
from service.storage.jobs import JobStore  # noqa: E402
from service.storage.patients import PatientStore  # noqa: E402
from service.storage.registries import RegistryStore  # noqa: E402

EXAMPLE = orjson.loads((ROOT / "examples/encounter_package.json").read_bytes())
CLIENT = EXAMPLE["requested_by"]["client_id"]
SECRET = "peers-benchmark-secret-peers-benchmark-secret"
PROCESSED = 1
PACED_RATE = 20.0  # jobs/s, well under what each system sustains
PYTHON_CONCURRENCY = CONCURRENCY
POLL_SECONDS = 0.05
SYSTEMS = ("ours", "celery", "dramatiq")
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def fresh_submissions(count: int) -> list[dict[str, Any]]:
    return [with_new_ids(EXAMPLE) for _ in range(count)]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (every worker here stops cleanly on it), then SIGKILL after `timeout`."""
    stop_processes([process], timeout)


TICKS = os.sysconf("SC_CLK_TCK")
# The embedded MongoDB server's process, when this script started it: its CPU time is shown.
MONGO_PID: int | None = None


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` and of its descendants alive now."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / TICKS
    return own + sum(cpu_seconds(child) for child in children)


def start_logged(
    command: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> subprocess.Popen:
    """`command` in a process of its own, its output into `log` (shown if it fails)."""
    with log.open("ab") as output:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=output)


def delete_amqp(queues: list[str], exchanges: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def prepare_database(mongodb_url: str, db_name: str, pending: int = 0) -> list[str]:
    """The demo patient and registry records the example refers to; with `pending`, that many
    pending jobs of the example's client (ours' pending reads). Returns their ids."""

    async def prepare() -> list[str]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
        try:
            db = client[db_name]
            await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
            store = JobStore(db)
            ids = []
            for _ in range(pending):
                job_id = new_job_id()
                eta = datetime.now(UTC) + timedelta(hours=1)
                job = NewJob(job_id, EXAMPLE["type"], uuid.uuid4().hex, CLIENT, "u", job_id, eta)
                await store.create_pending(job)
                ids.append(job_id)
            return ids
        finally:
            await client.close()

    return asyncio.run(prepare())


def threaded_reads(read: Callable[[], object], concurrency: int, seconds: float) -> float:
    """Reads/s of `read()` called in a loop by `concurrency` threads for `seconds`."""
    counts = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    deadline = 0.0

    def worker(index: int) -> None:
        start.wait()
        count = 0
        while time.monotonic() < deadline:
            read()
            count += 1
        counts[index] = count

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


class System:
    name = ""

    def __init__(self, mongodb_url: str, data_dir: str) -> None:
        self.mongodb_url = mongodb_url
        self.data_dir = data_dir
        self.db_name = f"peers_{self.name}_{uuid.uuid4().hex[:8]}"
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(mongodb_url, tz_aware=True)
        self.processes: list[subprocess.Popen] = []
        self.log = Path(data_dir) / f"{self.db_name}.log"

    def output(self) -> str:
        """The end of what this system's processes printed."""
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return f"; its output ends:\n{tail}"

    def check_alive(self) -> None:
        """Raise when one of this system's processes ended."""
        if any(process.poll() is not None for process in self.processes):
            raise RuntimeError(f"{self.name}: a process ended{self.output()}")

    # Each system: start, submit (returns the submission times), terminal times, reads, stop.
    def start(self) -> None:
        raise NotImplementedError

    def submit(self, submissions: list[dict[str, Any]], rate: float | None) -> dict[str, float]:
        """Send the submissions, at once or at `rate` per second; job id -> time sent. (The
        peers' way: a task each, with our job id; ours overrides it.)"""
        sent: dict[str, float] = {}

        def send(submission: dict[str, Any]) -> None:
            job_id = new_job_id()
            body = orjson.dumps(submission).decode()
            sent[job_id] = time.time()
            self.send_task(job_id, body)

        paced(submissions, rate, send)
        return sent

    def send_task(self, job_id: str, body: str) -> None:
        """A peer's task for one submission."""
        raise NotImplementedError

    def ended(self, ids: list[str]) -> dict[str, float]:
        """Of `ids`, the jobs ended: job id -> when they ended (raises if one did not end
        processed)."""
        raise NotImplementedError

    def reads(self, ids: list[str], seconds: float) -> float:
        raise NotImplementedError

    def pending_ids(self) -> list[str]:
        raise NotImplementedError

    def clean_up(self) -> None:
        """After its processes stopped: delete what it declared on the broker (and Redis)."""
        raise NotImplementedError

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of this system's processes (ours: the consumer and the API),
        and of the MongoDB server (0 when this script did not start it)."""
        own = sum(cpu_seconds(process.pid) for process in self.processes)
        return own, cpu_seconds(MONGO_PID) if MONGO_PID else 0.0

    def wait_ended(self, sent: dict[str, float], limit: float = 300) -> dict[str, float]:
        """Every job of `sent` ended: poll the last one sent, then read them all (again, for
        the few still running, until they end)."""
        ids = list(sent)
        deadline = time.monotonic() + limit
        while not self.ended(ids[-1:]):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: the jobs did not end{self.output()}")
            time.sleep(POLL_SECONDS)
        ended: dict[str, float] = {}
        while len(ended) < len(ids):
            ended.update(self.ended([i for i in ids if i not in ended]))
            if len(ended) < len(ids):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name}: {len(ids) - len(ended)} jobs did not end{self.output()}"
                    )
                time.sleep(POLL_SECONDS)
        return ended

    def measure(self, jobs: int, paced: int, seconds: float, wrk: bool) -> dict[str, float]:
        figures: dict[str, float] = {}
        try:
            self.start()
            submissions = fresh_submissions(jobs)
            cpu_before = self.cpu()
            sent = self.submit(submissions, None)
            figures["publish s"] = max(sent.values()) - min(sent.values())
            ended = self.wait_ended(sent)
            cpu = [
                (after - before) / jobs * 1000
                for before, after in zip(cpu_before, self.cpu(), strict=True)
            ]
            figures["worker cpu ms/job"], figures["mongo cpu ms/job"] = cpu
            latencies = [ended[i] - sent[i] for i in sent]
            figures["jobs/s"] = jobs / (max(ended.values()) - min(sent.values()))
            figures["burst p50 ms"] = percentile(latencies, 0.5) * 1000
            figures["burst p99 ms"] = percentile(latencies, 0.99) * 1000
            finished = list(sent)
            sent = self.submit(fresh_submissions(paced), PACED_RATE)
            ended = self.wait_ended(sent)
            latencies = [ended[i] - sent[i] for i in sent]
            figures["paced p50 ms"] = percentile(latencies, 0.5) * 1000
            figures["paced p99 ms"] = percentile(latencies, 0.99) * 1000
            figures["reads/s finished"] = self.reads(finished, seconds)
            figures["reads/s pending"] = self.reads(self.pending_ids(), seconds)
            if wrk and isinstance(self, Ours):
                figures["wrk reads/s finished"] = self.wrk(finished, seconds)
                figures["wrk reads/s pending"] = self.wrk(self.pending_ids(), seconds)
        finally:
            for process in self.processes:
                stop_process(process)
            self.clean_up()
            self.mongo.drop_database(self.db_name)
            self.mongo.close()
        return figures


def paced(items: list[Any], rate: float | None, send: Callable[[Any], None]) -> None:
    """`send` each item, at `rate` per second from the first (or all at once)."""
    started = time.monotonic()
    for index, item in enumerate(items):
        if rate is not None:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        send(item)


class Ours(System):
    name = "ours"

    def __init__(self, mongodb_url: str, data_dir: str) -> None:
        super().__init__(mongodb_url, data_dir)
        self.prefix = f"peers.{uuid.uuid4().hex[:8]}."
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.publisher = SubmissionPublisher(AMQP_URL, Topology(self.prefix))

    def start(self) -> None:
        self._pending = prepare_database(self.mongodb_url, self.db_name, pending=200)
        self.port = free_port()
        # The consumer logs at warning as in bench/consumer_throughput.py; the API at info,
        # as in production and bench/polling.py (an access line per request).
        env = service_env(
            self.mongodb_url,
            self.db_name,
            self.prefix,
            SECRET,
            self.data_dir,
            HTTP_PORT=str(self.port),
            SIGNATURE_MODE="decode",
            CONSUMER_PREFETCH=str(CONCURRENCY),
        )
        self.processes = [
            start_logged([str(BIN / "medevents"), "consumer"], env, self.log),
            subprocess.Popen(  # its access lines are not kept
                [str(BIN / "medevents"), "api"],
                env={**env, "LOG_LEVEL": "info"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        self.base = f"http://127.0.0.1:{self.port}"
        self.runner.run(wait_up(f"{self.base}/api/jobs/x", any_status=True))
        self.token = mint_token(SECRET, CLIENT, ["job:read"], "u", 3600)
        self.wait_ended(self.submit(fresh_submissions(1), None))  # warm-up

    def submit(self, submissions: list[dict[str, Any]], rate: float | None) -> dict[str, float]:
        sent: dict[str, float] = {}

        async def one(submission: dict[str, Any], job_id: str) -> None:
            sent[job_id] = time.time()
            await self.publisher.publish(submission, job_id, None)

        async def send_all() -> None:
            # One at a time, each confirmed before the next, as the peers' clients send.
            started = time.monotonic()
            for index, submission in enumerate(submissions):
                if rate is not None:
                    await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
                await one(submission, new_job_id())

        self.runner.run(send_all())
        return sent

    def ended(self, ids: list[str]) -> dict[str, float]:
        found = self.mongo[self.db_name]["jobs"].find(
            {"_id": {"$in": ids}, "status": {"$ne": 0}}, {"status": 1, "updated_at": 1}
        )
        ended = {}
        for job in found:
            if job["status"] != PROCESSED:
                raise RuntimeError(f"ours: job {job['_id']} ended {job['status']}")
            ended[job["_id"]] = job["updated_at"].timestamp()
        return ended

    def pending_ids(self) -> list[str]:
        return self._pending

    def reads(self, ids: list[str], seconds: float) -> float:
        return self.runner.run(self._reads(ids, seconds))

    async def _reads(self, ids: list[str], seconds: float) -> float:
        headers = {"Authorization": f"Bearer {self.token}"}
        count = bad = 0
        connector = aiohttp.TCPConnector(limit=PYTHON_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            deadline = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal count, bad
                while time.monotonic() < deadline:
                    url = f"{self.base}/api/jobs/{random.choice(ids)}"
                    async with http.get(url, allow_redirects=False) as response:
                        await response.read()
                    count += 1
                    bad += response.status not in (200, 303)

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(PYTHON_CONCURRENCY)))
            elapsed = time.monotonic() - started
        if bad:
            raise RuntimeError(f"ours: {bad} reads answered neither 200 nor 303")
        return count / elapsed

    def wrk(self, ids: list[str], seconds: float) -> float:
        """Our status reads driven by wrk (bench/wrk/poll.lua, as bench/polling.py does)."""
        with tempfile.NamedTemporaryFile("w", suffix=".ids") as ids_file:
            ids_file.write("\n".join(ids) + "\n")
            ids_file.flush()
            result = run_wrk(
                WRK_SCRIPTS / "poll.lua",
                self.base,
                [ids_file.name, self.token],
                connections=PYTHON_CONCURRENCY,
                seconds=max(1, round(seconds)),
            )
        if result.failed:
            raise RuntimeError(f"ours: wrk saw {result.failures()}")
        return result.rps

    def clean_up(self) -> None:
        with self.runner as runner:
            runner.run(self.publisher.close())
            runner.run(delete_topology(AMQP_URL, Topology(self.prefix)))
            schedule = Settings().webhook_retry_schedule
            runner.run(delete_webhook_topology(AMQP_URL, WebhookTopology(self.prefix), schedule))


class Celery(System):
    name = "celery"

    def __init__(self, mongodb_url: str, data_dir: str) -> None:
        from bench.peers_celery import TASK, make_app

        super().__init__(mongodb_url, data_dir)
        self.queue = f"peers.{uuid.uuid4().hex[:8]}.celery"
        self.task = TASK
        self.app = make_app(AMQP_URL, self.mongodb_url, self.db_name, self.queue)

    def start(self) -> None:
        prepare_database(self.mongodb_url, self.db_name)
        env = worker_environment(AMQP_URL, self.mongodb_url, self.db_name, self.queue)
        self.worker = start_logged(
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "bench.peers_celery",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(CONCURRENCY),
                "--prefetch-multiplier",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
                "-Q",
                self.queue,
            ],
            env,
            self.log,
        )
        self.processes = [self.worker]
        self.wait_ended(self.submit(fresh_submissions(1), None), limit=60)  # warm-up

    def send_task(self, job_id: str, body: str) -> None:
        self.app.send_task(self.task, args=[job_id, body], task_id=job_id)

    def ended(self, ids: list[str]) -> dict[str, float]:
        found = self.mongo[self.db_name]["celery_taskmeta"].find(
            {"_id": {"$in": ids}}, {"status": 1, "date_done": 1, "result": 1}
        )
        ended = {}
        for meta in found:
            result = orjson.loads(meta["result"])
            if meta["status"] != "SUCCESS" or result["status"] != PROCESSED:
                raise RuntimeError(f"celery: task {meta['_id']} ended {meta['status']} {result}")
            date_done = meta["date_done"]
            if date_done.tzinfo is None:
                date_done = date_done.replace(tzinfo=UTC)
            ended[meta["_id"]] = date_done.timestamp()
        return ended

    def pending_ids(self) -> list[str]:
        return [str(uuid.uuid4()) for _ in range(200)]

    def reads(self, ids: list[str], seconds: float) -> float:
        app = self.app
        return threaded_reads(
            lambda: app.AsyncResult(random.choice(ids)).state, PYTHON_CONCURRENCY, seconds
        )

    def clean_up(self) -> None:
        self.app.close()
        delete_amqp([self.queue], [self.queue])


class Dramatiq(System):
    name = "dramatiq"

    def __init__(self, mongodb_url: str, data_dir: str) -> None:
        from bench.peers_dramatiq import make_actor, make_broker

        super().__init__(mongodb_url, data_dir)
        hex_id = uuid.uuid4().hex[:8]
        self.queue = f"peers_{hex_id}_dramatiq"
        self.namespace = f"peers-{hex_id}"
        self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.broker, self.backend = make_broker(AMQP_URL, self.redis_url, self.namespace)
        self.actor = make_actor(self.broker, self.queue)
        self.messages: dict[str, Any] = {}

    def start(self) -> None:
        prepare_database(self.mongodb_url, self.db_name)
        env = worker_environment(
            AMQP_URL,
            self.mongodb_url,
            self.db_name,
            self.queue,
            **{REDIS_URL: self.redis_url, NAMESPACE: self.namespace},
            dramatiq_queue_prefetch=str(CONCURRENCY),
        )
        self.worker = start_logged(
            [
                PYTHON,
                "-m",
                "dramatiq",
                "bench.peers_dramatiq",
                "--processes",
                "1",
                "--threads",
                str(CONCURRENCY),
                "--queues",
                self.queue,
            ],
            env,
            self.log,
        )
        self.processes = [self.worker]
        self.wait_ended(self.submit(fresh_submissions(1), None), limit=60)  # warm-up

    def send_task(self, job_id: str, body: str) -> None:
        self.messages[job_id] = self.actor.send(job_id, body)

    def ended(self, ids: list[str]) -> dict[str, float]:
        from dramatiq.results import ResultMissing

        ended = {}
        for job_id in ids:
            try:
                result = self.messages[job_id].get_result(backend=self.backend, block=False)
            except ResultMissing:
                continue
            if result["status"] != PROCESSED:
                raise RuntimeError(f"dramatiq: job {job_id} ended {result}")
            ended[job_id] = result["finished"]
        return ended

    def pending_ids(self) -> list[str]:
        ids = []
        for _ in range(200):
            job_id = new_job_id()  # a message never sent: no result, as one still queued
            self.messages[job_id] = self.actor.message(job_id, "{}")
            ids.append(job_id)
        return ids

    def reads(self, ids: list[str], seconds: float) -> float:
        from dramatiq.results import ResultMissing

        messages, backend = [self.messages[i] for i in ids], self.backend

        def read() -> None:
            try:
                random.choice(messages).get_result(backend=backend, block=False)
            except ResultMissing:
                pass

        return threaded_reads(read, PYTHON_CONCURRENCY, seconds)

    def clean_up(self) -> None:
        self.broker.close()
        delete_amqp([self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"], [])
        client: redis.Redis = redis.Redis.from_url(self.redis_url)
        try:
            for key in client.scan_iter(match=f"{self.namespace}*", count=1000):
                client.delete(key)
        finally:
            client.close()


CLASSES: dict[str, type[System]] = {"ours": Ours, "celery": Celery, "dramatiq": Dramatiq}

# (line, higher is better)
LINES = (
    ("jobs/s", True),
    ("burst p50 ms", False),
    ("burst p99 ms", False),
    ("paced p50 ms", False),
    ("paced p99 ms", False),
    ("reads/s finished", True),
    ("reads/s pending", True),
    ("worker cpu ms/job", False),
    ("mongo cpu ms/job", False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 60 jobs (under 60 s)")
    parser.add_argument("--jobs", type=int, help="jobs per burst (300; quick: 60)")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick: 1)")
    parser.add_argument("--seconds", type=float, help="seconds per reads run (4; quick: 1.5)")
    parser.add_argument("--only", choices=SYSTEMS, action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    jobs = args.jobs or (60 if args.quick else 300)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    paced_jobs = 20 if args.quick else 60
    configure_logging("json", "warning")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        sys.exit(
            f"bench/peers.py: Redis at {redis_url} does not answer ({exc}); "
            "run scripts/ensure-bench-tools"
        )
    settings = Settings.from_env()
    systems = tuple(args.only or SYSTEMS)
    with tempfile.TemporaryDirectory() as data_dir:
        if settings.mongodb_url:
            run(settings.mongodb_url, data_dir, jobs, rounds, seconds, paced_jobs, systems)
        else:
            with EmbeddedMongo(Path(data_dir)) as mongodb_url:
                global MONGO_PID
                MONGO_PID = int((Path(data_dir) / "mongo/nx-27017.pid").read_text())
                run(mongodb_url, data_dir, jobs, rounds, seconds, paced_jobs, systems)


def run(
    mongodb_url: str,
    data_dir: str,
    jobs: int,
    rounds: int,
    seconds: float,
    paced_jobs: int,
    systems: tuple[str, ...] = SYSTEMS,
) -> None:
    print(
        f"{jobs} jobs per burst, {paced_jobs} paced at {PACED_RATE:g}/s, reads for {seconds:g} s"
        f" at concurrency {PYTHON_CONCURRENCY}; {rounds} round(s), order rotating; medians",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    for number in range(rounds):
        turn = number % len(systems)
        order = systems[turn:] + systems[:turn]
        for name in order:
            figures = CLASSES[name](mongodb_url, data_dir).measure(
                jobs, paced_jobs, seconds, wrk=True
            )
            results[name].append(figures)
            shown = ", ".join(f"{key} {value:.1f}" for key, value in figures.items())
            print(f"  round {number + 1} {name}: {shown}", flush=True)
    median = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    if systems == SYSTEMS:
        print_table(median)


def print_table(median: dict[str, dict[str, float]]) -> None:
    print(
        f"\n{'line':22s} {'ours':>9s} {'celery':>9s} {'dramatiq':>9s}"
        f" {'ours/celery':>12s} {'ours/dramatiq':>14s}"
    )
    for line, higher in LINES:
        row = f"{line:22s}" + "".join(f" {median[n][line]:9.1f}" for n in SYSTEMS)
        for peer, width in (("celery", 12), ("dramatiq", 14)):
            ratio = median["ours"][line] / median[peer][line]
            ahead = ratio > 1 if higher else ratio < 1
            row += f" {ratio:{width - 2}.2f} {'+' if ahead else '-'}"
        print(row)
    for line in ("wrk reads/s finished", "wrk reads/s pending"):
        if line in median["ours"]:
            print(f"{line:22s} {median['ours'][line]:9.1f}   (ours only: wrk, 1 thread)")
    print(
        "+: ours ahead (more jobs or reads per second; less latency or CPU: ratio < 1), -: not."
        "\ncpu ms/job: CPU time per job of the burst, of the system's processes (ours: consumer"
        " and API) and of the MongoDB server"
    )


if __name__ == "__main__":
    main()

"""Scale-out throughput: N submissions over HTTP, to terminal, with 1 API and 1 consumer
process, then with 2 API and 3 consumer processes, on one broker and one MongoDB server.

    .venv/bin/python bench/scale.py [--quick] [--jobs 3000] [--rounds 3]

The submissions are posted by `wrk` (`bench/wrk/scale_submit.lua`: each body once, 32
connections in all, split between the APIs), and the jobs' ends are counted from the service's own
job-finished events (`service.messaging.job_events`: the consumers publish each finished
job's id on the fanout exchange the APIs listen to; this script binds a queue of its own), so
that nothing polls the MongoDB server being measured. Once every job has been heard of, the
final state is checked once: every job processed, with one attempt, and the entity counts
exact. The two set-ups alternate, A B, B A, A B..., each run on a database of its own; prints
jobs/s (first submission to last finished event) of each run, each set-up's median, and the
ratio of the medians and the median of the rounds' ratios. --quick: 500 jobs, one round.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.cli.demo import DEMO_CLIENT, DEMO_USER, write_demo_records  # noqa: E402
from service.cli.publish import with_new_ids  # noqa: E402
from service.domain.entities import ALL_ENTITY_KINDS, VISIT  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.messaging.job_events import declare_events_exchange  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.entities import EntityStore  # noqa: E402
from service.storage.patients import PatientStore  # noqa: E402
from service.storage.registries import RegistryStore  # noqa: E402

EXAMPLE = orjson.loads((ROOT / "examples/encounter_package.json").read_bytes())
SECRET = "scale-benchmark-secret-scale-benchmark-se"
LUA = ROOT / "bench/wrk/scale_submit.lua"
CONNECTIONS = 32
# What a package writes: its entities and its visit, one of each in the example.
WRITTEN_KINDS = (*ALL_ENTITY_KINDS, VISIT)
SETUPS = ((1, 1), (2, 3))
# How long without a new finished event before the wait gives up (a stuck run).
SILENCE_SECONDS = 60.0
# The longest the submissions may take (wrk's thread stops when all are answered).
SUBMIT_TIMEOUT_SECONDS = 300.0


class FinishedJobs:
    """The ids the consumers announce as finished, heard on a queue of this script's own
    bound to the topology's events exchange (declared before any process starts, so that
    no event is missed)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.ids: set[str] = set()
        self.last_at = time.perf_counter()
        self.expected: int | None = None
        self.complete = asyncio.Event()
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel()
        exchange = await declare_events_exchange(channel, self.topology)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = orjson.loads(message.body)
        ids = event["job_ids"] if "job_ids" in event else [event["job_id"]]
        before = len(self.ids)
        self.ids.update(ids)
        if len(self.ids) > before:
            self.last_at = time.perf_counter()
        self.check()

    def check(self) -> None:
        if self.expected is not None and len(self.ids) >= self.expected:
            self.complete.set()

    async def wait(self) -> bool:
        """Until every accepted job has been heard of (True), or no new one for
        `SILENCE_SECONDS` (False). A local wait: nothing is asked of any server."""
        while not self.complete.is_set():
            if time.perf_counter() - self.last_at > SILENCE_SECONDS:
                return False
            await asyncio.sleep(0.02)
        return True

    async def wait_consumers(self, count: int) -> None:
        """Until `count` consumers consume the jobs queue (asked of the broker, not MongoDB)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            for _ in range(600):
                try:
                    queue = await channel.declare_queue(self.topology.queue, passive=True)
                except aio_pika.exceptions.ChannelClosed:  # not declared yet
                    channel = await self._connection.channel()
                else:
                    if queue.declaration_result.consumer_count >= count:
                        return
                await asyncio.sleep(0.1)
        finally:
            await channel.close()
        raise RuntimeError(f"{count} consumers did not start")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


def bodies_files(ports: list[int], bodies: list[bytes], work_dir: Path) -> list[Path]:
    """Each API's share of the bodies, one a line, in a file of its own."""
    files = []
    for n, port in enumerate(ports):
        files.append(work_dir / f"bodies-{port}.jsonl")
        files[-1].write_bytes(b"\n".join(bodies[n :: len(ports)]) + b"\n")
    return files


async def submit_with_wrk(
    ports: list[int], files: list[Path], path: str, token: str
) -> list[asyncio.subprocess.Process]:
    """One wrk per API, each posting the bodies of its file once."""
    return [
        await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{CONNECTIONS // len(ports)}",
            "-d600s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}",
            "--",
            str(bodies_file),
            path,
            token,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for port, bodies_file in zip(ports, files, strict=True)
    ]


async def answered(process: asyncio.subprocess.Process) -> tuple[int, int]:
    """The `answered ACCEPTED REFUSED` line wrk's script prints when its share is answered."""
    assert process.stdout is not None
    seen = []
    async for line in process.stdout:
        seen.append(line.decode())
        parts = seen[-1].split()
        if len(parts) == 3 and parts[0] == "answered":
            return int(parts[1]), int(parts[2])
    output = "".join(seen)
    raise RuntimeError(f"wrk ended without answering (exit {await process.wait()}):\n{output}")


async def stop_wrk(process: asyncio.subprocess.Process) -> str:
    """wrk sleeps for its duration after its thread stopped: SIGINT ends it now."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
    output = await process.stdout.read() if process.stdout else b""
    await process.wait()
    return output.decode()


async def run(mongodb_url: str, apis: int, consumers: int, jobs: int, data_dir: str) -> dict:
    db_name, prefix = f"scale_{uuid.uuid4().hex[:8]}", f"scale.{uuid.uuid4().hex[:8]}."
    topology = Topology(prefix)
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    # The patients and registry records the example refers to (`service.cli.demo`).
    await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    finished = FinishedJobs(topology)
    await finished.start()
    ports = [free_port() for _ in range(apis)]
    # The example's packages are unsigned: the consumers decode them, verifying nothing.
    env = service_env(mongodb_url, db_name, prefix, SECRET, data_dir, SIGNATURE_MODE="decode")
    processes = [start_medevents("api", {**env, "HTTP_PORT": str(port)}) for port in ports] + [
        start_medevents("consumer", env) for _ in range(consumers)
    ]
    wrks: list[asyncio.subprocess.Process] = []
    try:
        for port in ports:
            await wait_up(f"http://127.0.0.1:{port}/health/ready")
        token = mint_token(SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], DEMO_USER, 3600)
        path = f"/api/patients/{EXAMPLE['patient_id']}/encounter_package"
        bodies = [orjson.dumps(with_new_ids(EXAMPLE)["data"]) for _ in range(jobs)]
        await finished.wait_consumers(consumers)
        with tempfile.TemporaryDirectory() as work_dir:
            files = bodies_files(ports, bodies, Path(work_dir))
            started = time.perf_counter()
            wrks = await submit_with_wrk(ports, files, path, token)
            async with asyncio.timeout(SUBMIT_TIMEOUT_SECONDS):
                counts = await asyncio.gather(*(answered(wrk) for wrk in wrks))
        submitted = time.perf_counter() - started
        accepted = sum(count for count, _ in counts)
        refused = sum(count for _, count in counts)
        finished.expected = accepted
        finished.check()
        heard_all = await finished.wait()
        elapsed = finished.last_at - started
        for wrk in wrks:
            await stop_wrk(wrk)
        # The final state, read once, after the measurement.
        processed = await db["jobs"].count_documents({"status": 1, "attempts": 1})
        entities = {
            kind.collection: await db[kind.collection].count_documents({}) for kind in WRITTEN_KINDS
        }
        return {
            "rate": len(finished.ids) / elapsed,
            "submit_rate": accepted / submitted,
            "accepted": accepted,
            "refused": refused,
            "heard": len(finished.ids),
            "heard_all": heard_all,
            "processed": processed,
            "entities": entities,
        }
    finally:
        for wrk in wrks:
            if wrk.returncode is None:
                wrk.kill()
                await wrk.wait()
        await finished.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        await client.drop_database(db_name)
        await client.close()
        await delete_topology(AMQP_URL, topology)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--jobs", type=int, help="jobs per run (default 3000; --quick 500)")
    parser.add_argument("--rounds", type=int, help="rounds of both set-ups (3; --quick 1)")
    args = parser.parse_args()
    jobs = args.jobs or (500 if args.quick else 3000)
    rounds = args.rounds or (1 if args.quick else 3)
    expected = {kind.collection: jobs for kind in WRITTEN_KINDS}
    rates: dict[tuple[int, int], list[float]] = {setup: [] for setup in SETUPS}
    print(f"{jobs} jobs per run, {rounds} round(s); jobs/s from first submission to last event")
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as url:
        for round_ in range(rounds):
            order = SETUPS if round_ % 2 == 0 else SETUPS[::-1]
            for apis, consumers in order:
                result = asyncio.run(run(url, apis, consumers, jobs, data_dir))
                rates[(apis, consumers)].append(result["rate"])
                exact = (
                    result["accepted"] == jobs
                    and result["heard"] == jobs
                    and result["processed"] == jobs
                    and result["entities"] == expected
                )
                print(
                    f"round {round_ + 1}: {apis} API, {consumers} consumer(s): "
                    f"{result['rate']:.1f} jobs/s (submitted at {result['submit_rate']:.0f}/s; "
                    f"{result['accepted']} accepted, {result['refused']} refused, "
                    f"{result['heard']} finished events); processed once, entities exact: "
                    f"{exact}",
                    flush=True,
                )
                if not result["heard_all"]:
                    print(f"  no finished event for {SILENCE_SECONDS:.0f} s: the run stalled")
    small, large = (statistics.median(rates[setup]) for setup in SETUPS)
    pairs = zip(rates[SETUPS[0]], rates[SETUPS[1]], strict=True)
    per_round = statistics.median(large / small for small, large in pairs)
    print(
        f"median jobs/s: 1+1 {small:.1f}, 2+3 {large:.1f}; ratio 2+3 / 1+1 = {large / small:.2f} "
        f"(median of the rounds' ratios {per_round:.2f})"
    )


if __name__ == "__main__":
    main()

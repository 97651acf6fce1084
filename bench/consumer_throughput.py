"""Processing throughput: jobs/s from the first delivery to the last ack, ours against bare
consumers, interleaved round by round on the same broker and MongoDB server.

    .venv/bin/python bench/consumer_throughput.py [--quick] [--jobs 300] [--rounds 5]
        [--consumers ours,bare-same-writes,bare-lean,bare-1write]

Workloads: the example package (examples/encounter_package.json: its encounter and one of
each of the ten kinds), and the largest package the contract lets through: the example with
50 observations (`schemas.package_content.MAX_ENTITIES`, eHealth's `maxItems` of every
array of a package; 51 are refused with a 422 before any item is checked), unsigned
(SIGNATURE_MODE=decode).

Consumers, each on its own queue and database, each fed the same messages (new ids each):
  ours          JobConsumer + SubmissionProcessor: validation, rules, entities, job document
  bare-same-writes   the same writes as ours: the same job and entity documents, into
                collections with the same indexes, the job finished by the same atomic
                update; no validation, no registry or patient read, no framework
  bare-lean     the same inserts as ours, as lean as they come: job, the encounter, the
                visit, one insert_many per entity kind as the client sent them in
                `signed_data`, a job update, into collections without indexes
  bare-1write   one insert per message, no decoding (the broker's and driver's ceiling)
  ours-marshmallow  (only when named: --consumers ours,ours-marshmallow,...) ours with every
                load by marshmallow alone, as before the schemas' compiled loads

How it is measured, the same way for every consumer:
- the messages are published before the consumer starts (the publisher's CPU is not in the
  measurement: it shares the cores), then counted from the first delivery to the last ack;
  every consumer counts a job after its message's ack returned, in memory (no query of the
  server under measurement);
- a round runs every consumer once, in an order rotated from round to round (a consumer is
  not always first or last, after a warm-up round that is not counted); each ratio is taken
  within a round, and the median of the rounds' ratios is reported, beside the median rates;
- the whole process runs on uvloop, as `medevents consumer` does.
Targets (issue 18): ours >= 0.9 x bare-same-writes and >= 0.75 x bare-lean, both workloads.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import structlog
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
from schemas.package_content import MAX_ENTITIES
from schemas.rules import marshmallow_only
from service.cli.demo import write_demo_records
from service.cli.publish import with_new_ids
from service.config import Settings
from service.domain.clock import utcnow
from service.domain.entities import ENCOUNTER, ENCOUNTER_ENTITY_KINDS, VISIT
from service.domain.jobs import new_job_id, order_key
from service.messaging.broker import Topology, declare_topology, delete_topology
from service.messaging.job_queue import JobQueue
from service.messaging.publisher import SubmissionPublisher
from service.observability.logs import configure_logging
from service.signatures import Base64JsonDecoder, decode_unsigned, encode_unsigned
from service.storage.embedded import EmbeddedMongo
from service.storage.entities import EntityStore
from service.storage.entity_reads import EntityReads
from service.storage.jobs import JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import SubmissionProcessor

EXAMPLE = orjson.loads(
    (Path(__file__).resolve().parents[1] / "examples/encounter_package.json").read_bytes()
)
PREFETCH = 16
CONSUMERS = ("ours", "bare-same-writes", "bare-lean", "bare-1write")
# Not run unless named (--consumers): ours with every load by marshmallow alone, as before the
# schemas' compiled loads (what they gain, in the same run).
OPTIONAL = ("ours-marshmallow",)
# (baseline, target): ours / baseline must reach the target.
TARGETS = (("bare-same-writes", 0.9), ("bare-lean", 0.75), ("bare-1write", None))


def big_package() -> dict:
    """The example with `MAX_ENTITIES` observations: the largest valid package."""
    submission = with_new_ids(EXAMPLE)
    content = decode_unsigned(submission["data"]["signed_data"])
    observation = content["observations"][0]  # kept: the package's condition refers to it
    content["observations"] = [observation] + [
        {**observation, "id": str(uuid.uuid4())} for _ in range(MAX_ENTITIES - 1)
    ]
    submission["data"]["signed_data"] = encode_unsigned(content)
    return submission


WORKLOADS: dict[str, tuple[str, Callable[[], dict]]] = {
    "example": ("example package (11 entities)", lambda: with_new_ids(EXAMPLE)),
    "largest": (f"{MAX_ENTITIES} observations (the most a package may hold)", big_package),
}


class Clock:
    """When the first delivery came and how many messages were acked, counted after the
    ack returned (every consumer alike)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.first: float | None = None
        self.last = 0.0
        self.acked = 0
        self.done = asyncio.Event()

    def delivered(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def ack_returned(self) -> None:
        self.acked += 1
        if self.acked == self.expected:
            self.last = time.perf_counter()
            self.done.set()

    def rate(self) -> float:
        assert self.first is not None
        return self.expected / (self.last - self.first)


class CountingQueue(JobQueue):
    """Ours, counted where the bare consumers count: when a delivery comes, and after the
    ack of its message returned."""

    def __init__(self, clock: Clock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    async def consume(self, on_message: Any) -> None:
        async def counted(message: AbstractIncomingMessage) -> None:
            self.clock.delivered()
            await on_message(message)

        await super().consume(counted)

    async def settle(self, message: AbstractIncomingMessage, how: str) -> None:
        await super().settle(message, how)
        if how == "ack":
            self.clock.ack_returned()


async def publish_all(amqp_url: str, topology: Topology, submissions: list[dict]) -> None:
    """Into the consumer's queue, before it starts (the publisher declares it)."""
    publisher = SubmissionPublisher(amqp_url, topology)
    try:
        for start in range(0, len(submissions), 50):
            await asyncio.gather(
                *(
                    publisher.publish(submission, new_job_id(), None)
                    for submission in submissions[start : start + 50]
                )
            )
    finally:
        await publisher.close()


async def until_done(clock: Clock, limit_seconds: float = 600) -> None:
    try:
        async with asyncio.timeout(limit_seconds):
            await clock.done.wait()
    except TimeoutError:
        raise RuntimeError(f"the consumer acked {clock.acked} of {clock.expected}") from None


async def run_ours(
    settings: Settings, db: AsyncDatabase, topology: Topology, jobs: int, *, compiled: bool = True
) -> float:
    await JobStore(db).ensure_indexes()
    await EntityStore(db).ensure_indexes()
    await EntityReads(db).ensure_indexes()  # the reads' indexes: every write pays for them
    processor = SubmissionProcessor(
        JobStore(db),
        EntityStore(db),
        PatientStore(db),
        builtin_registry(),
        registries=RegistryStore(db),
        signatures=Base64JsonDecoder(),
    )
    clock = Clock(jobs)
    queue = CountingQueue(clock, settings.amqp_url, topology, prefetch=PREFETCH)
    consumer = JobConsumer(queue, processor)
    # The deliveries' tasks inherit the context the connection was opened in.
    with nullcontext() if compiled else marshmallow_only():
        await consumer.start()
    try:
        await until_done(clock)
    finally:
        await consumer.stop()
    processed = await db["jobs"].count_documents({"status": 1})  # after the measurement
    if processed != jobs:  # a rate of 422s would measure the wrong thing
        failed = await db["jobs"].find_one({"status": {"$ne": 1}})
        raise RuntimeError(f"{jobs - processed} jobs not processed, e.g. {failed}")
    return clock.rate()


async def run_bare(
    settings: Settings, db: AsyncDatabase, topology: Topology, jobs: int, writes: str
) -> float:
    """A bare aio-pika consumer. `writes`: "1write", "lean" or "same-writes" (the module's
    docstring). The entities are read from `signed_data` as the client sent it (base64 of
    the JSON: decoded, not verified, not validated)."""
    if writes == "same-writes":
        await JobStore(db).ensure_indexes()
        await EntityStore(db).ensure_indexes()
        await EntityReads(db).ensure_indexes()
    connection = await aio_pika.connect_robust(settings.amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    _, queue = await declare_topology(channel, topology)
    clock = Clock(jobs)

    async def handle(message: AbstractIncomingMessage) -> None:
        clock.delivered()
        body = orjson.loads(message.body)
        job_id = message.message_id or ""
        if writes == "1write":
            await db["jobs"].insert_one({"_id": job_id, "status": 0, "type": body["type"]})
        elif writes == "lean":
            await lean_writes(db, job_id, body)
        else:
            await same_writes(db, job_id, body)
        await message.ack()
        clock.ack_returned()

    tag = await queue.consume(handle)
    try:
        await until_done(clock)
    finally:
        await queue.cancel(tag)
        await connection.close()
    return clock.rate()


async def lean_writes(db: AsyncDatabase, job_id: str, body: dict) -> None:
    data = body["data"]
    content = orjson.loads(base64.b64decode(data["signed_data"]))
    await db["jobs"].insert_one({"_id": job_id, "status": 0, "type": body["type"]})
    encounter = content["encounter"]
    await db["encounters"].insert_one({**encounter, "_id": encounter["id"]})
    if visit := data.get("visit"):
        await db["visits"].insert_one({**visit, "_id": visit["id"]})
    for kind in ENCOUNTER_ENTITY_KINDS:
        if items := content.get(kind.package_key):
            await db[kind.collection].insert_many(
                [{**e, "_id": e["id"]} for e in items], ordered=False
            )
    await db["jobs"].update_one({"_id": job_id}, {"$set": {"status": 1}})


async def same_writes(db: AsyncDatabase, job_id: str, body: dict) -> None:
    data = body["data"]
    content = orjson.loads(base64.b64decode(data["signed_data"]))
    now = utcnow()
    who = body["requested_by"]
    await db["jobs"].insert_one(
        {
            "_id": job_id,
            "type": body["type"],
            "status": 0,
            "status_code": 202,
            "hash": job_id,
            "client_id": who["client_id"],
            "user_id": who["user_id"],
            "request_id": job_id,
            "patient_id": body["patient_id"],
            "eta": now,
            "inserted_at": now,
            "updated_at": now,
            "order_key": order_key(now, job_id),
            "attempts": 0,
        }
    )
    stamp = {
        "patient_id": body["patient_id"],
        "job_id": job_id,
        "client_id": who["client_id"],
        "user_id": who["user_id"],
        "inserted_at": now,
        "updated_at": now,
    }
    encounter_id = content["encounter"]["id"]
    await db[ENCOUNTER.collection].insert_one(
        {**content["encounter"], "_id": encounter_id, **stamp, "signed_by": None}
    )
    links = [{"entity": ENCOUNTER.entity, "href": encounter_id}]
    if visit := data.get("visit"):
        await db[VISIT.collection].insert_one({**visit, "_id": visit["id"], **stamp})
    for kind in ENCOUNTER_ENTITY_KINDS:
        if items := content.get(kind.package_key):
            await db[kind.collection].insert_many(
                [{**e, "_id": e["id"], **stamp, "encounter_id": encounter_id} for e in items],
                ordered=False,
            )
            links += [{"entity": kind.entity, "href": e["id"]} for e in items]
    await db["jobs"].find_one_and_update(
        {"_id": job_id, "status": 0},
        {
            "$set": {"status": 1, "status_code": 200, "response": links},
            "$currentDate": {"updated_at": True},
            "$inc": {"attempts": 1},
        },
    )


async def one_run(
    settings: Settings, client: AsyncMongoClient, consumer: str, submissions: list[dict]
) -> float:
    """One consumer over its own database and queue, fed `submissions` (new ids)."""
    db_name = f"bench_{uuid.uuid4().hex[:10]}"
    db = client[db_name]
    # The patients and registry records the examples refer to (`service.cli.demo`).
    await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    topology = Topology(f"bench.{uuid.uuid4().hex[:10]}.")
    try:
        await publish_all(settings.amqp_url, topology, [with_new_ids(s) for s in submissions])
        if consumer.startswith("ours"):
            compiled = consumer == "ours"
            return await run_ours(settings, db, topology, len(submissions), compiled=compiled)
        return await run_bare(
            settings, db, topology, len(submissions), consumer.removeprefix("bare-")
        )
    finally:
        await client.drop_database(db_name)
        await delete_topology(settings.amqp_url, topology)


async def main(
    jobs: int,
    rounds: int,
    mongodb_url: str,
    consumers: tuple[str, ...],
    workloads: tuple[str, ...],
) -> None:
    settings = Settings.from_env().with_changes(mongodb_url=mongodb_url)
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
    print(
        f"{jobs} jobs per run, prefetch {PREFETCH}, {rounds} rounds (order rotated, after a"
        " warm-up); jobs/s from the first delivery to the last ack; uvloop"
    )
    try:
        for name, make in (WORKLOADS[workload] for workload in workloads):
            submissions = [make() for _ in range(jobs)]
            for consumer in consumers:  # warm-up: connections, caches, the server's files
                await one_run(settings, client, consumer, submissions[: max(10, jobs // 10)])
            runs: list[dict[str, float]] = []
            for number in range(rounds):
                shift = number % len(consumers)
                order = consumers[shift:] + consumers[:shift]
                runs.append({c: await one_run(settings, client, c, submissions) for c in order})
            report(name, runs, consumers)
    finally:
        await client.close()


def report(name: str, runs: list[dict[str, float]], consumers: tuple[str, ...]) -> None:
    print(f"\n{name}")
    for consumer in consumers:
        rates = [run[consumer] for run in runs]
        spread = ", ".join(f"{rate:.1f}" for rate in rates)
        print(f"  {consumer:17s} {statistics.median(rates):8.1f} jobs/s  (rounds: {spread})")
    targets = [*TARGETS, ("ours-marshmallow", None)]
    for baseline, target in targets:
        if "ours" not in consumers or baseline not in consumers:
            continue
        ratios = [run["ours"] / run[baseline] for run in runs]
        median = statistics.median(ratios)
        verdict = ""
        if target is not None:
            verdict = f"  target {target}: {'met' if median >= target else 'NOT met'}"
        spread = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"  ours / {baseline:17s} {median:5.2f}  (rounds: {spread}){verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--jobs", type=int, help="jobs per run (300; --quick 30)")
    parser.add_argument("--rounds", type=int, help="rounds (5; --quick 3)")
    parser.add_argument(
        "--consumers",
        default=",".join(CONSUMERS),
        help="which consumers, comma-separated (`ours` alone: to profile it)",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="example, largest or both (the default)"
    )
    args = parser.parse_args()
    consumers = tuple(args.consumers.split(","))
    workloads = tuple(args.workloads.split(","))
    if unknown := set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if unknown := set(consumers) - set(CONSUMERS) - set(OPTIONAL):
        parser.error(f"unknown consumers: {', '.join(sorted(unknown))}")
    jobs = args.jobs or (30 if args.quick else 300)
    rounds = args.rounds or (3 if args.quick else 5)
    configure_logging("json", "warning")
    structlog.get_logger()
    settings = Settings.from_env()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if settings.mongodb_url:
            runner.run(main(jobs, rounds, settings.mongodb_url, consumers, workloads))
        else:
            with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as url:
                runner.run(main(jobs, rounds, url, consumers, workloads))

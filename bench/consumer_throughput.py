"""Processing throughput: jobs/s from publish to terminal, against bare consumers measured in
the same run, on the same broker and MongoDB server.

    .venv/bin/python bench/consumer_throughput.py [--jobs 300] [--repeats 3]

Workloads: the example package (11 entities and its visit), and the example package with 50
observations (the most an array may hold), unsigned (SIGNATURE_MODE=decode).
Consumers, each on its own queue, each fed the same messages:
  ours         JobConsumer + SubmissionProcessor: validation, rules, entities, job document
  bare-1write  a minimal aio-pika consumer doing one insert per message (no validation)
  bare-same-inserts  a minimal aio-pika consumer doing the same inserts as ours, without
               validation, schemas or framework (job insert, the visit, one insert_many per
               entity kind as the client sent them in `signed_data`, job update), into
               collections without indexes
  bare-same-writes   the same writes as ours: the same job and entity documents, into
               collections with the same indexes, the job finished by the same atomic
               update; still no validation, no registry or patient read, no framework
Prints the median of the repeats and the ratios ours / bare.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import structlog
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
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


BIG_OBSERVATIONS = 50  # schemas.package_content.MAX_ENTITIES


def big_package() -> dict:
    submission = with_new_ids(EXAMPLE)
    content = decode_unsigned(submission["data"]["signed_data"])
    observation = content["observations"][0]  # kept: the package's condition refers to it
    content["observations"] = [observation] + [
        {**observation, "id": str(uuid.uuid4())} for _ in range(BIG_OBSERVATIONS - 1)
    ]
    submission["data"]["signed_data"] = encode_unsigned(content)
    return submission


WORKLOADS: dict[str, Callable[[], dict]] = {
    "example package (11 entities)": lambda: with_new_ids(EXAMPLE),
    f"{BIG_OBSERVATIONS} observations": big_package,
}


async def publish_all(amqp_url: str, topology: Topology, submissions: list[dict]) -> list[str]:
    publisher = SubmissionPublisher(amqp_url, topology)
    job_ids = [new_job_id() for _ in submissions]
    try:
        for start in range(0, len(submissions), 50):
            await asyncio.gather(
                *(
                    publisher.publish(submission, job_id, None)
                    for submission, job_id in zip(
                        submissions[start : start + 50], job_ids[start : start + 50], strict=True
                    )
                )
            )
    finally:
        await publisher.close()
    return job_ids


async def wait_done(
    count: Callable[[], Awaitable[int]], expected: int, limit_seconds: float = 600
) -> None:
    deadline = time.monotonic() + limit_seconds
    while await count() < expected:
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not finish")
        await asyncio.sleep(0.02)


class CountingProcessor(SubmissionProcessor):
    """Ours, counting finished jobs in memory: the bare consumers count in memory too, and
    counting by querying MongoDB would load the server under measurement (it did, by a
    third of its CPU, before this)."""

    finished = 0

    async def complete(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        job = await super().complete(*args, **kwargs)
        self.finished += 1
        return job


async def run_ours(
    settings: Settings, db: AsyncDatabase, topology: Topology, submissions: list[dict]
) -> float:
    jobs, entities = JobStore(db), EntityStore(db)
    await jobs.ensure_indexes()
    await entities.ensure_indexes()
    await EntityReads(db).ensure_indexes()  # the reads' indexes: every write pays for them
    processor = CountingProcessor(
        jobs,
        entities,
        PatientStore(db),
        builtin_registry(),
        registries=RegistryStore(db),
        signatures=Base64JsonDecoder(),
    )
    consumer = JobConsumer(JobQueue(settings.amqp_url, topology, prefetch=PREFETCH), processor)
    await consumer.start()
    started = time.perf_counter()
    await publish_all(settings.amqp_url, topology, submissions)

    async def count() -> int:
        return processor.finished

    await wait_done(count, len(submissions))
    elapsed = time.perf_counter() - started
    await consumer.stop()
    processed = await db["jobs"].count_documents({"status": 1})
    if processed != len(submissions):  # a rate of 422s would measure the wrong thing
        failed = await db["jobs"].find_one({"status": {"$ne": 1}})
        raise RuntimeError(f"{len(submissions) - processed} jobs not processed, e.g. {failed}")
    return len(submissions) / elapsed


async def run_bare(
    settings: Settings,
    db: AsyncDatabase,
    topology: Topology,
    submissions: list[dict],
    writes: str,
) -> float:
    """A bare consumer. `writes`: "1write" (one insert per message), "same-inserts" (the job,
    the visit, one insert per entity kind as the client sent them, a job update; no indexes),
    or "same-writes" (what ours writes: the same job and entity documents into collections
    with the same indexes, the job finished by the same atomic update; no validation, no
    registry or patient read, no framework). The entities are read from `signed_data` as the
    client sent it (base64 of the JSON: decoded, not verified)."""
    if writes == "same-writes":
        await JobStore(db).ensure_indexes()
        await EntityStore(db).ensure_indexes()
        await EntityReads(db).ensure_indexes()
    connection = await aio_pika.connect_robust(settings.amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    _, queue = await declare_topology(channel, topology)
    done = 0

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal done
        body = orjson.loads(message.body)
        job_id = message.message_id
        data = body["data"]
        if writes != "1write":
            content = orjson.loads(base64.b64decode(data["signed_data"]))
        if writes == "same-writes":
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
            visit = data.get("visit")
            if visit:
                await db[VISIT.collection].insert_one({**visit, "_id": visit["id"], **stamp})
            for kind in ENCOUNTER_ENTITY_KINDS:
                items = content.get(kind.package_key) or []
                if items:
                    await db[kind.collection].insert_many(
                        [
                            {**e, "_id": e["id"], **stamp, "encounter_id": encounter_id}
                            for e in items
                        ],
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
        else:
            await db["jobs"].insert_one({"_id": job_id, "status": 0, "type": body["type"]})
        if writes == "same-inserts":
            encounter = content["encounter"]
            await db["encounters"].insert_one({**encounter, "_id": encounter["id"]})
            if visit := data.get("visit"):
                await db["visits"].insert_one({**visit, "_id": visit["id"]})
            for kind in ENCOUNTER_ENTITY_KINDS:
                items = content.get(kind.package_key) or []
                if items:
                    await db[kind.collection].insert_many(
                        [{**e, "_id": e["id"]} for e in items], ordered=False
                    )
            await db["jobs"].update_one({"_id": job_id}, {"$set": {"status": 1}})
        await message.ack()
        done += 1

    await queue.consume(handle)
    started = time.perf_counter()
    await publish_all(settings.amqp_url, topology, submissions)

    async def count() -> int:
        return done

    await wait_done(count, len(submissions))
    elapsed = time.perf_counter() - started
    await connection.close()
    return len(submissions) / elapsed


async def one_round(
    settings: Settings, client: AsyncMongoClient, name: str, submissions: list[dict]
) -> dict[str, float]:
    rates = {}
    for consumer in ("ours", "bare-1write", "bare-same-inserts", "bare-same-writes"):
        db_name = f"bench_{uuid.uuid4().hex[:10]}"
        db = client[db_name]
        # The patients and registry records the examples refer to (`service.cli.demo`).
        await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
        topology = Topology(f"bench.{uuid.uuid4().hex[:10]}.")
        fresh = [with_new_ids(s) for s in submissions]
        try:
            if consumer == "ours":
                rates[consumer] = await run_ours(settings, db, topology, fresh)
            else:
                rates[consumer] = await run_bare(
                    settings, db, topology, fresh, consumer.removeprefix("bare-")
                )
        finally:
            await client.drop_database(db_name)
            await delete_topology(settings.amqp_url, topology)
    return rates


async def main(jobs: int, repeats: int, mongodb_url: str) -> None:
    settings = Settings.from_env().with_changes(mongodb_url=mongodb_url)
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    print(
        f"{jobs} jobs per run, prefetch {PREFETCH}, median of {repeats} runs;"
        " jobs/s from publish to terminal"
    )
    try:
        for name, make in WORKLOADS.items():
            submissions = [make() for _ in range(jobs)]
            runs = [await one_round(settings, client, name, submissions) for _ in range(repeats)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(f"\n{name}")
            for key, rate in median.items():
                print(f"  {key:12s} {rate:8.1f} jobs/s")
            for baseline in ("bare-1write", "bare-same-inserts", "bare-same-writes"):
                print(f"  ours / {baseline:17s} = {median['ours'] / median[baseline]:.2f}")
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_logging("json", "warning")
    structlog.get_logger()
    settings = Settings.from_env()
    if settings.mongodb_url:
        asyncio.run(main(args.jobs, args.repeats, settings.mongodb_url))
    else:
        with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as url:
            asyncio.run(main(args.jobs, args.repeats, url))

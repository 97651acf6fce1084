"""Nothing lost, nothing twice: redeliveries, crashes between any two writes, poison messages,
MongoDB outages and graceful stops, through the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
import uuid
from datetime import datetime

import orjson
import pytest
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient

from consumers.consumer import LAST_DELIVERY, OUTAGE_BACKOFF_START, JobConsumer
from consumers.processors.package_model import entities_of
from service.cli.demo import DEMO_CLIENT, write_demo_records
from service.domain.entities import ALL_ENTITY_KINDS, ENCOUNTER, ENTERED_IN_ERROR, VISIT
from service.domain.jobs import JobStatus, new_job_id
from service.messaging.broker import Topology
from service.messaging.job_queue import JobQueue
from service.signatures import encode_unsigned
from service.storage.embedded import EmbeddedMongo, free_port
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import open_mongo_client
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import Delivery
from tests.conftest import bearer, new_job
from tests.harness import (
    ACTIVE_PATIENT,
    RawPublisher,
    entity_counts,
    example,
    examples,
    package_content,
    package_entity_count,
    poll,
    wait_for_jobs,
)
from tests.integration.conftest import make_processor

CRASH_MODES = ["before", "after", "half"]


async def write_records(db) -> None:
    """What the examples refer to: the patients, the demo MIS's registry records, its episode."""
    await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))


def with_content(submission: dict, content: dict) -> dict:
    """The submission with `content` as its (unsigned) package."""
    return {**submission, "data": {**submission["data"], "signed_data": encode_unsigned(content)}}


def marked_entity_count(cancel: dict) -> dict[str, int]:
    """How many entities of each collection a cancel marks `entered_in_error`."""
    content = package_content(cancel)
    return {
        kind.collection: sum(
            entity.get(kind.status_field) == ENTERED_IN_ERROR
            for entity in entities_of(content, kind)
        )
        for kind in ALL_ENTITY_KINDS
    }


async def wait_for_count(db, finished: int) -> None:
    for _ in range(1000):
        if await db["jobs"].count_documents({"status": {"$ne": 0}}) >= finished:
            return
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def consumer_on_its_own_mongodb(settings, tmp_path):
    """A consumer on a MongoDB server of the test's own, to be stopped and started: yields
    the server, the test's view of the database, and the consumer's."""
    server = EmbeddedMongo(tmp_path / "own-mongo", port=free_port())
    url = server.start()
    client = AsyncMongoClient(url, tz_aware=True)
    db = client[settings.mongodb_db]
    await write_records(db)
    consumer_client = open_mongo_client(settings.with_changes(mongodb_timeout_ms=300), url)
    consumer_db = consumer_client[settings.mongodb_db]
    consumer = JobConsumer(
        JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=4),
        make_processor(consumer_db),
    )
    await consumer.start()
    try:
        yield server, db, consumer_db
    finally:
        async with asyncio.timeout(30):
            await consumer.stop(drain_seconds=5)
        await consumer_client.close()
        await client.close()
        server.stop()


class SimulatedCrash(BaseException):
    """The process dies here: not an exception the processor may catch and handle."""


WRITES = {
    JobStore: ("create_pending", "finish", "record_failed_attempt"),
    EntityStore: ("insert", "remove_written_by", "mark_entered_in_error", "unmark", "set_fields"),
}


def crash_at(processor, write_number: int, mode: str) -> list[str]:
    """Make the processor's stores die at their `write_number`-th write: before it, after it,
    or (for inserts and the marks of a cancel) half-way through it; never, for a write number
    of 0. Returns the log of writes made."""
    made: list[str] = []
    for store in (processor.jobs, processor.entities):
        for name in WRITES[type(store)]:
            original = getattr(store, name)

            @functools.wraps(original)
            async def write(*args, __original=original, __name=name, **kwargs):
                made.append(__name)
                if len(made) != write_number:
                    return await __original(*args, **kwargs)
                if mode == "before":
                    raise SimulatedCrash(__name)
                if mode == "half" and __name == "insert":
                    kind, documents, job_id = args
                    await __original(kind, documents[: max(1, len(documents) // 2)], job_id)
                    raise SimulatedCrash(__name)
                if mode == "half" and __name == "mark_entered_in_error":
                    patient_id, job_id, marks = args
                    await __original(patient_id, job_id, marks[: max(1, len(marks) // 2)])
                    raise SimulatedCrash(__name)
                await __original(*args, **kwargs)
                raise SimulatedCrash(__name)

            setattr(store, name, write)
    return made


async def fresh_db(mongodb_url: str):
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[f"test_crash_{uuid.uuid4().hex[:12]}"]
    await write_records(db)
    await EntityStore(db).ensure_indexes()
    return client, db


async def process_with_crashes(mongodb_url: str, deliveries: list[Delivery], mode: str):
    """For each write the processing makes, a run that crashes there and a redelivery after
    it; yields (write number, db, which deliveries crashed) for each, until a run goes
    through without crashing."""
    write_number = 1
    while True:
        client, db = await fresh_db(mongodb_url)
        try:
            crashed: list[bool] = []
            for delivery in deliveries:
                processor = make_processor(db, retry_delay=0)
                crash_at(processor, write_number, mode)
                try:
                    await processor.process(delivery)
                    crashed.append(False)
                except SimulatedCrash:
                    crashed.append(True)
                # The broker redelivers: the whole delivery again, twice for good measure.
                await make_processor(db).process(delivery)
                await make_processor(db).process(delivery)
            yield write_number, db, crashed
        finally:
            await client.drop_database(db.name)
            await client.close()
        if not any(crashed):
            return
        write_number += 1


async def writes_made(mongodb_url: str, deliveries: list[Delivery]) -> list[list[str]]:
    """The writes each delivery makes when nothing crashes (the crash points to expect)."""
    client, db = await fresh_db(mongodb_url)
    try:
        made = []
        for delivery in deliveries:
            processor = make_processor(db)
            made.append(crash_at(processor, 0, "after"))
            await processor.process(delivery)
        return made
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.mark.faults
@pytest.mark.parametrize("mode", CRASH_MODES)
async def test_a_crash_between_any_two_writes_ends_as_one_delivery(mongodb_url, mode):
    submission = example("encounter_package")
    delivery = Delivery(new_job_id(), orjson.dumps(submission), "req-crash")
    crash_points = 0
    async for write_number, db, crashed in process_with_crashes(mongodb_url, [delivery], mode):
        job = await db["jobs"].find_one({"_id": delivery.job_id})
        assert job["status"] == JobStatus.PROCESSED, (write_number, job)
        assert await entity_counts(db) == package_entity_count(submission), write_number
        assert await db[VISIT.collection].count_documents({}) == 1, write_number
        links = {link["href"] for link in job["response"]}
        assert len(links) == sum(package_entity_count(submission).values())
        crash_points += any(crashed)
    # The job, the encounter, its visit, 10 other entity kinds, finish: each a crash point.
    assert crash_points >= 14


@pytest.mark.faults
@pytest.mark.parametrize("mode", CRASH_MODES)
async def test_a_crash_while_cancelling_ends_as_one_delivery(mongodb_url, mode):
    """The cancel crashes before, after or half-way through (half its marks) each of its
    writes, in turn, and is delivered again: it ends processed, with every mark made once."""
    submission, cancel = examples("encounter_package", "cancel_encounter_package")
    encounter = package_content(cancel)["encounter"]
    create = Delivery(new_job_id(), orjson.dumps(submission))
    cancelling = Delivery(new_job_id(), orjson.dumps(cancel))
    _, cancel_writes = await writes_made(mongodb_url, [create, cancelling])
    # The job, the marks, the finish at least.
    assert len(cancel_writes) >= 3 and "mark_entered_in_error" in cancel_writes, cancel_writes
    cancel_crashes: list[str] = []
    async for write_number, db, crashed in process_with_crashes(
        mongodb_url, [create, cancelling], mode
    ):
        if crashed[1]:
            cancel_crashes.append(cancel_writes[write_number - 1])
        job = await db["jobs"].find_one({"_id": cancelling.job_id})
        assert job["status"] == JobStatus.PROCESSED, (write_number, job)
        for kind_collection, count in marked_entity_count(cancel).items():
            cancelled = await db[kind_collection].count_documents(
                {"cancelled_by_job": cancelling.job_id}
            )
            assert cancelled == count, (write_number, kind_collection)
        stored = await db[ENCOUNTER.collection].find_one({"_id": encounter["id"]})
        assert stored["cancellation_reason"] == encounter["cancellation_reason"], write_number
    assert cancel_crashes == cancel_writes  # it crashed at each of the cancel's writes


def another_package_in_between(processor, db, other: Delivery, raced: list[bool]) -> None:
    """Another consumer processes `other` between this processor's checks and its first
    write (once for all the processors sharing `raced`): an id the checks found free is
    taken by the time this package writes it."""
    original = processor.entities.insert

    async def insert(*args, **kwargs):
        if not raced:
            raced.append(True)
            await make_processor(db).process(other)
        return await original(*args, **kwargs)

    processor.entities.insert = insert


@pytest.mark.faults
@pytest.mark.parametrize("mode", CRASH_MODES)
async def test_a_conflict_found_half_way_leaves_nothing(mongodb_url, mode):
    """Another package takes one of this package's ids after this one's checks: the conflict
    is found as it writes (a 422 at that id), and nothing of it stays, whichever write it
    crashed before, after or half-way through, and however often it was redelivered."""
    first = example("encounter_package")
    second = example("encounter_package")
    content = package_content(second)
    taken_id = package_content(first)["procedures"][0]["id"]
    content["procedures"][0]["id"] = taken_id
    second = with_content(second, content)
    taking = Delivery(new_job_id(), orjson.dumps(first))
    conflicting = Delivery(new_job_id(), orjson.dumps(second))
    write_number = 1
    crashed_at: list[str] = []
    while True:
        client, db = await fresh_db(mongodb_url)
        try:
            raced: list[bool] = []
            processor = make_processor(db, retry_delay=0)
            another_package_in_between(processor, db, taking, raced)
            made = crash_at(processor, write_number, mode)
            crashed = False
            try:
                await processor.process(conflicting)
            except SimulatedCrash:
                crashed = True
                crashed_at.append(made[-1])
            for _ in range(2):  # the broker redelivers
                redelivered = make_processor(db)
                another_package_in_between(redelivered, db, taking, raced)
                await redelivered.process(conflicting)

            job = await db["jobs"].find_one({"_id": conflicting.job_id})
            assert (job["status"], job["status_code"]) == (JobStatus.FAILED, 422), write_number
            assert job["error"]["invalid"] == [
                {
                    "entry": "$.procedures[0].id",
                    "entry_type": "json_data_property",
                    "rules": [
                        {
                            "rule": "invalid",
                            "description": f"Procedure with id '{taken_id}' already exists",
                            "params": [],
                        }
                    ],
                }
            ], write_number
            assert await entity_counts(db) == package_entity_count(first), write_number
            assert await db[VISIT.collection].count_documents({}) == 1, write_number
        finally:
            await client.drop_database(db.name)
            await client.close()
        if not crashed:
            break
        write_number += 1
    # It crashed at each write: the job, 12 inserts (the last one finding the id taken), the
    # removal of what was written, the finish.
    assert len(crashed_at) == write_number - 1 >= 15, crashed_at
    assert crashed_at[0] == "create_pending" and crashed_at[-1] == "finish", crashed_at
    assert crashed_at.count("insert") >= 12 and "remove_written_by" in crashed_at, crashed_at


async def test_the_same_message_delivered_twice_is_processed_once(
    db, raw_publisher, start_consumer
):
    await start_consumer()
    submission = example("encounter_package")
    job_id = new_job_id()
    for _ in range(3):
        await raw_publisher.publish(submission, message_id=job_id)
    jobs = await wait_for_jobs(db, [job_id])
    assert jobs[job_id]["status"] == JobStatus.PROCESSED
    await asyncio.sleep(0.5)  # the duplicates are consumed and acked too
    assert await entity_counts(db) == package_entity_count(submission)
    assert await db["jobs"].count_documents({}) == 1
    assert (await raw_publisher.queue.declare()).message_count == 0


async def test_poison_messages_mixed_into_valid_traffic(
    db, raw_publisher, start_consumer, captured_logs
):
    await start_consumer()
    valid = [example("encounter_package") for _ in range(3)]
    valid_ids = [new_job_id() for _ in valid]
    unknown_type = {**example("encounter_package"), "type": "encounter_package.delete"}
    poison = {
        "not json": b"{this is not json",
        "invalid utf-8": b'{"type": "\xff\xfe"}',
        "an array": b"[1, 2, 3]",
        "a string": b'"hello"',
        "5 MB": b'{"data": "' + b"x" * (5 * 1024 * 1024) + b'"}',
        "unknown type": orjson.dumps(unknown_type),
        "deeply nested": b"[" * 5000 + b"]" * 5000,
    }
    poison_ids = {name: new_job_id() for name in poison}
    await raw_publisher.publish(valid[0], message_id=valid_ids[0])
    for name, body in poison.items():
        await raw_publisher.publish(body, message_id=poison_ids[name])
    await raw_publisher.publish(valid[1], message_id=valid_ids[1])
    await raw_publisher.publish(b"garbage", message_id="../../etc/passwd")  # no usable id
    await raw_publisher.publish_without_message_id(b"garbage")  # neither id nor object body
    await raw_publisher.publish(valid[2], message_id=valid_ids[2])

    jobs = await wait_for_jobs(db, valid_ids + list(poison_ids.values()), timeout=60)

    for job_id in valid_ids:
        assert jobs[job_id]["status"] == JobStatus.PROCESSED
    for name, job_id in poison_ids.items():
        job = jobs[job_id]
        assert (job["status"], job["status_code"]) == (JobStatus.FAILED, 422), name
        assert job["error"]["type"] == "validation_failed"
    entries = {name: jobs[poison_ids[name]]["error"]["invalid"][0] for name in poison}
    assert entries["not json"]["entry"] == "$" and entries["not json"]["rules"][0]["rule"] == "json"
    assert entries["an array"]["rules"][0]["rule"] == "cast"
    assert entries["an array"]["rules"][0]["params"] == ["object"]
    assert entries["5 MB"]["rules"][0]["rule"] == "length"
    assert entries["unknown type"]["entry"] == "$.type"
    assert entries["unknown type"]["rules"][0]["rule"] == "inclusion"
    assert jobs[poison_ids["unknown type"]]["client_id"] == DEMO_CLIENT

    dead = await raw_publisher.dead_letters(expected=2)
    assert sorted(message.body for message in dead) == [b"garbage", b"garbage"]
    assert len(captured_logs.events("message_dead_lettered")) == 2
    assert await entity_counts(db) == {
        collection: 3 * count for collection, count in package_entity_count(valid[0]).items()
    }


async def test_a_message_without_id_gets_one_and_the_producer_is_told(
    db, raw_publisher, start_consumer
):
    await start_consumer()
    replies = await raw_publisher.channel.declare_queue(exclusive=True)
    submission = example("encounter_package")
    await raw_publisher.publish_without_message_id(
        submission, reply_to=replies.name, correlation_id="corr-1"
    )
    reply = None
    for _ in range(100):
        reply = await replies.get(no_ack=True, fail=False)
        if reply:
            break
        await asyncio.sleep(0.1)
    assert reply is not None and reply.correlation_id == "corr-1"
    answer = orjson.loads(reply.body)
    assert answer["href"] == f"/api/jobs/{answer['job_id']}"
    jobs = await wait_for_jobs(db, [answer["job_id"]])
    assert jobs[answer["job_id"]]["status"] == JobStatus.PROCESSED


@pytest.mark.faults
async def test_mongodb_outage_holds_the_message_until_it_is_back(
    settings, raw_publisher, tmp_path, captured_logs
):
    async with consumer_on_its_own_mongodb(settings, tmp_path) as (server, db, _):
        server.stop()
        submission = example("encounter_package")
        job_id = new_job_id()
        await raw_publisher.publish(submission, message_id=job_id)
        for _ in range(300):  # the consumer meets the outage and backs off, 4 times
            if len(captured_logs.events("mongodb_unavailable")) >= 4:
                break
            await asyncio.sleep(0.1)
        outage = captured_logs.events("mongodb_unavailable")[:4]
        assert len(outage) == 4, outage
        server.start()
        jobs = await wait_for_jobs(db, [job_id], timeout=60)
        assert jobs[job_id]["status"] == JobStatus.PROCESSED
        assert jobs[job_id]["attempts"] == 1
    # Backing off: each pause twice the one before, and really waited (never a hot loop).
    waits = [event["retry_in_s"] for event in outage]
    assert waits == [OUTAGE_BACKOFF_START * 2**n for n in range(4)]
    logged_at = [datetime.fromisoformat(event["timestamp"]) for event in outage]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(logged_at)]
    for wait, gap in zip(waits[:-1], gaps, strict=True):
        assert gap >= wait * 0.95, (waits, gaps)


@pytest.mark.faults
async def test_stop_finishes_in_flight_messages_and_loses_none(
    settings, db, patients, raw_publisher, start_consumer
):
    """`stop()` returns only once the jobs it found in flight are finished and acked; the
    messages it had not started go back to the queue; a consumer started later takes them."""
    submissions = [example("encounter_package") for _ in range(40)]
    job_ids = [new_job_id() for _ in submissions]
    for submission, job_id in zip(submissions, job_ids, strict=True):
        await raw_publisher.publish(submission, message_id=job_id)
    await EntityStore(db).ensure_indexes()
    processor = make_processor(db)
    in_flight: set[str] = set()
    complete = processor.complete

    async def slow_complete(job, parsed, data_root=None):
        in_flight.add(job["_id"])
        try:
            await asyncio.sleep(0.3)  # long enough for the stop to find it in flight
            return await complete(job, parsed, data_root)
        finally:
            in_flight.discard(job["_id"])

    processor.complete = slow_complete
    first = JobConsumer(
        JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8), processor
    )
    await first.start()
    try:
        await wait_for_count(db, 5)
        for _ in range(100):
            if len(in_flight) >= 2:
                break
            await asyncio.sleep(0.01)
        stopped_in_flight = set(in_flight)
        assert len(stopped_in_flight) >= 2  # jobs in the middle of processing
    finally:
        await first.stop(drain_seconds=10)

    assert not in_flight  # none of them still running once stop() returned
    finished = {job["_id"]: job async for job in db["jobs"].find({})}
    assert stopped_in_flight <= set(finished)
    for job_id in stopped_in_flight:
        assert finished[job_id]["status"] == JobStatus.PROCESSED, finished[job_id]
    assert all(job["status"] != JobStatus.PENDING for job in finished.values())
    assert len(finished) < len(job_ids)  # it really stopped half-way
    # What it finished was acked; what it had not started is back in the queue, ready.
    for _ in range(100):
        ready = (await raw_publisher.queue.declare()).message_count
        if ready == len(job_ids) - len(finished):
            break
        await asyncio.sleep(0.05)
    assert ready == len(job_ids) - len(finished)

    await start_consumer()
    jobs = await wait_for_jobs(db, job_ids, timeout=60)
    assert all(job["status"] == JobStatus.PROCESSED for job in jobs.values())
    assert await entity_counts(db) == {
        collection: len(job_ids) * count
        for collection, count in package_entity_count(submissions[0]).items()
    }


async def test_a_message_reusing_another_submissions_job_id_is_dead_lettered(
    db, raw_publisher, start_consumer, captured_logs
):
    await start_consumer()
    first = example("encounter_package")
    job_id = new_job_id()
    await raw_publisher.publish(first, message_id=job_id)
    before = (await wait_for_jobs(db, [job_id]))[job_id]

    other = example("encounter_package")  # another package under the same id
    await raw_publisher.publish(other, message_id=job_id)

    dead = await raw_publisher.dead_letters(expected=1)
    assert [orjson.loads(message.body) for message in dead] == [other]
    assert await db["jobs"].find_one({"_id": job_id}) == before
    other_encounter = package_content(other)["encounter"]["id"]
    assert await db["encounters"].find_one({"_id": other_encounter}) is None
    reasons = [e["reason"] for e in captured_logs.events("message_dead_lettered")]
    assert reasons == ["job id taken by another submission"]


def redeliveries() -> float:
    """The consumer's count of messages the broker delivered again (this process's)."""
    return REGISTRY.get_sample_value("medevents_consumer_redeliveries_total") or 0.0


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


@pytest.mark.faults
@pytest.mark.timeout(180)
async def test_mongodb_outage_then_a_broker_connection_drop_loses_nothing(
    own_broker_settings, rabbitmq_node, tmp_path
):
    """The broker closes the consumer's connection while it holds messages through a MongoDB
    outage (a network blip, a restart, RabbitMQ's consumer_timeout), twice: each time the
    broker takes the messages back and delivers them again to the reconnected consumer; once
    MongoDB is back, every job is processed, once.

    The connections closed are those the test opened, on a RabbitMQ node of the session's own
    (`tests/rabbitmq_node.py`): never one of the machine's broker."""
    settings = own_broker_settings
    held = 4
    before = await asyncio.to_thread(rabbitmq_node.connections)  # not the test's: left alone
    redelivered_before = redeliveries()
    async with (
        RawPublisher(settings) as raw_publisher,
        consumer_on_its_own_mongodb(settings, tmp_path) as (server, db, consumer_db),
    ):
        server.stop()
        submissions = {new_job_id(): example("encounter_package") for _ in range(held)}
        for job_id, submission in submissions.items():
            await raw_publisher.publish(submission, message_id=job_id)
        await asyncio.sleep(2)  # held through the outage
        closed: set[str] = set(before)
        for drop in range(1, 3):  # aio-pika reconnects, the broker redelivers; and once more
            opened = await asyncio.to_thread(rabbitmq_node.connections) - closed
            assert opened, "no connection to close: the consumer did not reconnect"
            for connection in opened:
                await asyncio.to_thread(rabbitmq_node.close_connection, connection, "test")
            closed |= opened

            async def gone(opened=opened) -> bool:
                return not await asyncio.to_thread(rabbitmq_node.connections) & opened

            async def delivered_again(drop=drop) -> bool:
                return redeliveries() - redelivered_before >= held * drop

            await until(gone, 30, f"the connections closed are gone ({opened})")
            await until(delivered_again, 60, f"{held} messages delivered again after drop {drop}")
        server.start()
        jobs = await wait_for_jobs(db, list(submissions), timeout=60)
        assert [job["status"] for job in jobs.values()] == [JobStatus.PROCESSED] * held
        assert [job["attempts"] for job in jobs.values()] == [1] * held
        assert await entity_counts(db) == {
            collection: held * count
            for collection, count in package_entity_count(example("encounter_package")).items()
        }
        async with asyncio.timeout(10):  # the driver is not wedged
            await consumer_db["patients"].find_one({})


@pytest.mark.faults
async def test_a_message_failing_outside_the_job_ends_it_500_at_its_last_delivery(
    db, raw_publisher, start_consumer, monkeypatch, captured_logs
):
    monkeypatch.setattr("consumers.consumer.OUTAGE_BACKOFF_START", 0.01)
    consumer = await start_consumer()

    async def broken_complete(job, parsed, data_root=None):
        await consumer._processor.entities.insert(  # something written before the failure
            ENCOUNTER, [{"_id": str(uuid.uuid4()), "job_id": job["_id"]}], job["_id"]
        )
        raise RuntimeError("a bug outside the handler")

    monkeypatch.setattr(consumer._processor, "complete", broken_complete)
    job_id = new_job_id()
    await raw_publisher.publish(example("encounter_package"), message_id=job_id)

    jobs = await wait_for_jobs(db, [job_id], timeout=90)

    assert jobs[job_id]["status"] == JobStatus.FAILED_WITH_ERROR
    assert jobs[job_id]["status_code"] == 500
    assert await db["encounters"].count_documents({}) == 0
    deliveries = captured_logs.events("message_failed")
    assert max(event["delivery_count"] for event in deliveries) == LAST_DELIVERY


async def test_a_cancel_waits_for_its_package_to_be_written(mongodb_url):
    client, db = await fresh_db(mongodb_url)
    try:
        submission, cancel = examples("encounter_package", "cancel_encounter_package")
        create = Delivery(new_job_id(), orjson.dumps(submission))
        processor = make_processor(db)
        crash_at(processor, 3, "after")  # the job, the encounter, its visit: the rest to come
        with pytest.raises(SimulatedCrash):
            await processor.process(create)
        cancelled = await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(cancel)))
        assert cancelled["status_code"] == 409
        assert cancelled["error"]["message"] == "The encounter's package is still being processed"

        await make_processor(db).process(create)  # the redelivery completes the package
        again = await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(cancel)))
        assert again["status"] == JobStatus.PROCESSED
        assert len(again["response"]) == sum(marked_entity_count(cancel).values())
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_a_cancel_that_fails_half_way_takes_its_marks_back(mongodb_url):
    """A cancel that ends 500 after marking half its entities gives them their status back;
    the next cancel of the same package does the whole of it."""
    client, db = await fresh_db(mongodb_url)
    try:
        submission, cancel = examples("encounter_package", "cancel_encounter_package")
        await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(submission)))
        first = Delivery(new_job_id(), orjson.dumps(cancel))
        processor = make_processor(db)
        calls = 0
        original = processor.entities.mark_entered_in_error

        async def half_then_bug(patient_id, job_id, marks, **kwargs):
            nonlocal calls
            calls += 1
            await original(patient_id, job_id, marks[: len(marks) // 2], **kwargs)
            raise RuntimeError("a bug after half the entities were marked")

        processor.entities.mark_entered_in_error = half_then_bug
        failed = await make_processor_with(processor).process(first)
        assert failed["status_code"] == 500 and calls == 3
        for collection in marked_entity_count(cancel):
            assert await db[collection].count_documents({"cancelled_by_job": first.job_id}) == 0
            assert await db[collection].count_documents({"status": "entered_in_error"}) == 0
            assert (
                await db[collection].count_documents({"verification_status": "entered_in_error"})
                == 0
            )
        condition = await db["conditions"].find_one({})
        assert condition["verification_status"] == "confirmed"

        second = await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(cancel)))
        assert second["status"] == JobStatus.PROCESSED
        for collection, count in marked_entity_count(cancel).items():
            marked = await db[collection].count_documents({"cancelled_by_job": second["_id"]})
            assert marked == count, collection
    finally:
        await client.drop_database(db.name)
        await client.close()


def make_processor_with(processor):
    processor.retry_delay = 0
    return processor


@pytest.mark.faults
@pytest.mark.timeout(180)
async def test_mongodb_stopped_for_10_s_in_the_middle_of_a_run(
    settings, raw_publisher, tmp_path, aiohttp_client
):
    from tests.conftest import bearer
    from tests.integration.conftest import app_for

    write = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
    async with consumer_on_its_own_mongodb(settings, tmp_path) as (server, db, _):
        api = await aiohttp_client(
            app_for(settings.with_changes(mongodb_url=server.url, mongodb_timeout_ms=300))
        )
        url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"

        async def submit() -> tuple[int, dict]:
            response = await api.post(url, json=example("encounter_package")["data"], headers=write)
            return response.status, await response.json()

        accepted = []
        for _ in range(3):
            status, body = await submit()
            assert status == 202
            accepted.append(body["data"]["links"][0]["href"].rsplit("/", 1)[-1])
        server.stop()
        direct = [new_job_id() for _ in range(3)]  # producers go on publishing meanwhile
        for job_id in direct:
            await raw_publisher.publish(example("encounter_package"), message_id=job_id)
        stopped_at = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - stopped_at < 10:
            status, body = await submit()
            assert status == 503 and body["error"]["type"] == "service_unavailable"
            polled = await api.get(f"/api/jobs/{accepted[0]}", headers=write)
            assert polled.status == 503
            await asyncio.sleep(1)
        server.start()

        jobs = await wait_for_jobs(db, accepted + direct, timeout=90)
        assert [job["status"] for job in jobs.values()] == [JobStatus.PROCESSED] * 6
        assert await db["jobs"].count_documents({"status": 0}) == 0  # the 503s left nothing
        for _ in range(100):
            polled = await api.get(f"/api/jobs/{accepted[0]}", headers=write, allow_redirects=False)
            if polled.status != 503:
                break
            await asyncio.sleep(0.2)
        assert polled.status == 303


async def test_a_package_refused_when_delivered_again_leaves_nothing(mongodb_url):
    """The first delivery wrote half the package and died; before the message comes again,
    the patient was deactivated. The job ends 409, and nothing of the package stays."""
    client, db = await fresh_db(mongodb_url)
    try:
        submission = example("encounter_package")
        delivery = Delivery(new_job_id(), orjson.dumps(submission))
        processor = make_processor(db)
        crash_at(processor, 5, "after")  # the job, the encounter, the visit, two kinds
        with pytest.raises(SimulatedCrash):
            await processor.process(delivery)
        assert await db["encounters"].count_documents({"job_id": delivery.job_id}) == 1
        await db["patients"].update_one(
            {"_id": submission["patient_id"]}, {"$set": {"status": "inactive"}}
        )
        job = await make_processor(db).process(delivery)
        assert (job["status"], job["status_code"]) == (JobStatus.FAILED, 409)
        for kind in ALL_ENTITY_KINDS:
            assert await db[kind.collection].count_documents({}) == 0, kind.collection
        assert await db["visits"].count_documents({}) == 0
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_a_cancel_refused_when_delivered_again_takes_its_marks_back(mongodb_url):
    """The cancel marked part of the package and died; then its legal entity was closed. The
    cancel ends 422 and every entity has its status back, so a later cancel can still work."""
    client, db = await fresh_db(mongodb_url)
    try:
        submission, cancel = examples("encounter_package", "cancel_encounter_package")
        await make_processor(db).process(Delivery(new_job_id(), orjson.dumps(submission)))
        delivery = Delivery(new_job_id(), orjson.dumps(cancel))
        processor = make_processor(db)
        original = processor.entities.mark_entered_in_error

        async def half_then_crash(patient_id, job_id, marks):
            await original(patient_id, job_id, marks[: len(marks) // 2])
            raise SimulatedCrash("mark_entered_in_error")

        processor.entities.mark_entered_in_error = half_then_crash
        with pytest.raises(SimulatedCrash):
            await processor.process(delivery)
        assert await db["encounters"].count_documents({"cancelled_by_job": delivery.job_id}) == 1
        await db["legal_entities"].update_one({}, {"$set": {"status": "CLOSED"}})
        job = await make_processor(db).process(delivery)
        assert (job["status"], job["status_code"]) == (JobStatus.FAILED, 422)
        assert job["error"]["invalid"][0]["rules"][0]["description"] == "LegalEntity is not active"
        for kind in ALL_ENTITY_KINDS:
            marked = await db[kind.collection].count_documents(
                {"cancelled_by_job": delivery.job_id}
            )
            assert marked == 0, kind.collection
        encounter = await db["encounters"].find_one({})
        assert encounter["status"] == "finished"
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_waiting_for_jobs_that_do_not_finish_fails_naming_them(db, store):
    """The harness: `wait_for_jobs` never returns jobs still pending as if they had finished."""
    pending, _ = await store.create_pending(new_job())
    finished, _ = await store.create_pending(new_job())
    await db["jobs"].update_one({"_id": finished["_id"]}, {"$set": {"status": 1}})
    never_created = new_job_id()
    started = time.monotonic()
    with pytest.raises(AssertionError) as raised:
        await wait_for_jobs(db, [finished["_id"], pending["_id"], never_created], timeout=0.5)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert f"still pending 1 [{pending['_id']}]" in message, message
    assert f"no job at all 1 [{never_created}]" in message, message
    assert finished["_id"] not in message
    assert list(await wait_for_jobs(db, [finished["_id"]], timeout=0.5)) == [finished["_id"]]


async def test_polling_a_job_that_does_not_finish_fails_naming_it(api, store):
    """The harness: `poll` never returns a pending job (or a 404) as if it had finished."""
    pending, _ = await store.create_pending(new_job())
    with pytest.raises(AssertionError, match=f"job {pending['_id']} still pending after 0.3 s"):
        await poll(api, pending["_id"], bearer(), timeout=0.3)
    unknown = new_job_id()
    with pytest.raises(AssertionError, match=f"job {unknown} still 404 \\(not found\\)"):
        await poll(api, unknown, bearer(), timeout=0.3)

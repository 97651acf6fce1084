"""The reconciler (`service.usecases.reconciler`): every path that used to leave a job pending
forever ends terminal, and a job whose message is still on its way is left alone.

The three paths, against the real broker and MongoDB wire server:
- MongoDB down at the message's last delivery (the consumer cannot end the job, and
  dead-letters the message);
- a message that crashes the consumer at every delivery (the broker's delivery limit
  dead-letters it);
- the broker refusing an HTTP submission's message and MongoDB lost before its job could be
  ended (and, for the record, MongoDB lost right after a publish that worked: nothing
  stays pending).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
from service.cli.demo import write_demo_records
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus, new_job_id, order_key, submission_hash
from service.domain.principal import Principal
from service.messaging.broker import DELIVERY_LIMIT, BrokerUnavailable, Topology, ready_messages
from service.messaging.job_queue import JobQueue
from service.messaging.publisher import SubmissionPublisher
from service.storage.embedded import EmbeddedMongo, free_port
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable, open_mongo_client
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.jobs import NOT_QUEUED, JobService
from service.usecases.reconciler import OVERDUE, SET_ASIDE, JobReconciler
from tests.conftest import new_job
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, entity_counts, example, start_medevents
from tests.integration.conftest import make_processor

GRACE = 1.0
INTERVAL = 0.2
TYPE = "encounter_package.create"
WRITER = Principal.from_scope_text("user-1", DEMO_CLIENT, "job:read encounter:write")


class NowEta:
    """An ETA estimator whose jobs are due at once, so that the grace alone is waited for."""

    async def eta(self):
        return utcnow()


def reconciler_for(
    db: AsyncDatabase,
    depth: Callable[[], Awaitable[int | None]],
    *,
    grace: float = GRACE,
    max_pending: float = 0,
    ended: list[str] | None = None,
) -> JobReconciler:
    return JobReconciler(
        JobStore(db),
        EntityStore(db),
        depth,
        interval_seconds=INTERVAL,
        grace_seconds=grace,
        max_pending_seconds=max_pending,
        on_ended=ended.append if ended is not None else None,
    )


async def reconciled(reconciler: JobReconciler, db: AsyncDatabase, job_id: str, timeout=20):
    """The job once the running reconciler ended it (or as it is at the timeout)."""
    reconciler.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            job = await db["jobs"].find_one({"_id": job_id})
            if job["status"] != JobStatus.PENDING or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.1)
    finally:
        await reconciler.stop()


def assert_ended(job: dict, outcome=OVERDUE) -> None:
    assert job["status"] == JobStatus.FAILED_WITH_ERROR
    assert job["status_code"] == 500
    assert job["error"] == outcome.error
    assert "pending_key" not in job


async def pending_job(db: AsyncDatabase, submission: dict) -> str:
    """A pending job of `submission`, due now (its message is published by the test)."""
    job_id = new_job_id()
    job = new_job(job_id=job_id, hash=submission_hash(submission), eta=utcnow())
    await JobStore(db).create_pending(job)
    return job_id


@pytest.fixture
async def own_mongodb(
    settings, tmp_path: Path
) -> AsyncIterator[tuple[EmbeddedMongo, AsyncDatabase]]:
    """A MongoDB server of the test's own, that it stops and starts; the stores on it answer
    `StoreUnavailable` within half a second while it is down."""
    server = EmbeddedMongo(tmp_path / "own-mongo", port=free_port())
    url = server.start()
    client = open_mongo_client(settings.with_changes(mongodb_timeout_ms=500), url)
    db = client[settings.mongodb_db]
    await JobStore(db).ensure_indexes()
    await EntityStore(db).ensure_indexes()
    try:
        yield server, db
    finally:
        await client.close()
        server.stop()


def ready_in(raw_publisher) -> Callable[[], Awaitable[int | None]]:
    """The jobs queue's ready messages, as the consumer's `JobQueue.depth` counts them."""
    return lambda: ready_messages(raw_publisher.queue)


async def until_the_queue_is_empty(raw_publisher, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await ready_messages(raw_publisher.queue) != 0:
        assert time.monotonic() < deadline, "the queue did not empty"
        await asyncio.sleep(0.1)


async def until_mongodb_answers(db: AsyncDatabase, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await JobStore(db).ping():
        assert time.monotonic() < deadline, "MongoDB did not come back"
        await asyncio.sleep(0.2)


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_mongodb_down_at_the_last_delivery(settings, own_mongodb, raw_publisher) -> None:
    server, db = own_mongodb
    submission = example("encounter_package")
    job_id = await pending_job(db, submission)
    processor = make_processor(db)

    async def a_bug_around_the_job(delivery, parsed):
        raise RuntimeError("a bug outside the job's own retries")

    give_up = processor.give_up

    async def give_up_with_mongodb_down(job_id: str) -> None:
        server.stop()
        await give_up(job_id)

    processor.accept = a_bug_around_the_job  # type: ignore[method-assign]
    processor.give_up = give_up_with_mongodb_down  # type: ignore[method-assign]
    queue = JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8)
    consumer = JobConsumer(queue, processor)
    await consumer.start()
    try:
        await raw_publisher.publish(submission, message_id=job_id)
        dead = await raw_publisher.dead_letters(expected=1, timeout=60)
        assert [message.message_id for message in dead] == [job_id]
        server.start()
        await until_mongodb_answers(db)
        assert (await JobStore(db).get(job_id))["status"] == JobStatus.PENDING  # stuck, before

        ended: list[str] = []
        job = await reconciled(reconciler_for(db, consumer.queue_depth, ended=ended), db, job_id)
        assert_ended(job)
        assert ended == [job_id]  # the long polls of the job are woken
    finally:
        await consumer.stop(drain_seconds=5)


@pytest.mark.timeout(120)
async def test_a_message_that_crashes_every_delivery(
    settings, db, patients, raw_publisher, publisher, start_consumer
) -> None:
    submission = example("encounter_package")
    job_id = await pending_job(db, submission)
    await raw_publisher.publish(submission, message_id=job_id)
    # A consumer process killed by the message each time it takes it: the message goes back
    # unsettled, until the broker's delivery limit dead-letters it.
    returned = 0
    while (message := await raw_publisher.queue.get(no_ack=False, fail=False)) is not None:
        await message.nack(requeue=True)
        returned += 1
        await asyncio.sleep(0.02)
    assert returned == DELIVERY_LIMIT + 1
    assert [m.message_id for m in await raw_publisher.dead_letters(expected=1)] == [job_id]

    job = await reconciled(reconciler_for(db, ready_in(raw_publisher)), db, job_id)
    assert_ended(job)

    # The message comes back after all (an operator's replay): its job is terminal, and
    # nothing of the package is written.
    await raw_publisher.publish(submission, message_id=job_id)
    await start_consumer()
    await until_the_queue_is_empty(raw_publisher)
    await asyncio.sleep(0.5)
    assert_ended(await JobStore(db).get(job_id))
    assert sum((await entity_counts(db)).values()) == 0


class RefusingPublisher:
    """A broker that does not take the message; `before` runs first (MongoDB stops)."""

    def __init__(self, before: Callable[[], None] = lambda: None) -> None:
        self.before = before

    async def publish(self, *args, **kwargs) -> None:
        self.before()
        raise BrokerUnavailable("the broker did not confirm the message")


def job_service(db: AsyncDatabase, publisher) -> JobService:
    return JobService(JobStore(db), publisher, NowEta())  # type: ignore[arg-type]


async def submit(service: JobService, submission: dict) -> tuple[dict, bool]:
    job_type = builtin_registry().get(TYPE)
    assert job_type is not None
    return await service.submit(WRITER, job_type, ACTIVE_PATIENT, submission["data"], "req-1")


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_broker_refuses_and_mongodb_fails_before_the_job_is_ended(
    settings, own_mongodb, publisher, raw_publisher
) -> None:
    server, db = own_mongodb
    submission = example("encounter_package")
    with pytest.raises(BrokerUnavailable):
        await submit(job_service(db, RefusingPublisher(before=server.stop)), submission)
    server.start()
    await until_mongodb_answers(db)
    stuck = await db["jobs"].find({}).to_list()
    assert [job["status"] for job in stuck] == [JobStatus.PENDING]  # reserved, never sent
    job_id = stuck[0]["_id"]

    # An identical submission meanwhile is that job (it holds the submission's key)...
    assert (await submit(job_service(db, publisher), submission))[0]["_id"] == job_id
    job = await reconciled(reconciler_for(db, ready_in(raw_publisher)), db, job_id)
    assert_ended(job)
    # ... and once it ended, a new job.
    again, new = await submit(job_service(db, publisher), submission)
    assert new and again["_id"] != job_id


async def test_broker_refuses_and_the_job_is_ended_at_once(db) -> None:
    """503 to its client, and the job ends 500 ("submit it again") at once: not removed, since
    an identical request to another API may have been handed it (test_dedup_across_apis)."""
    with pytest.raises(BrokerUnavailable):
        await submit(job_service(db, RefusingPublisher()), example("encounter_package"))
    (job,) = await db["jobs"].find({}).to_list()
    assert_ended(job, NOT_QUEUED)


class PublisherThen:
    """The real publisher; `after` runs once the broker confirmed the message."""

    def __init__(self, publisher: SubmissionPublisher, after: Callable[[], None]) -> None:
        self.publisher, self.after = publisher, after

    async def publish(self, *args, **kwargs) -> None:
        await self.publisher.publish(*args, **kwargs)
        self.after()


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_mongodb_fails_right_after_the_publish(settings, own_mongodb, publisher) -> None:
    """Nothing is written after the publish: the client has its job (202), and the consumer,
    holding the message through the outage, processes it once MongoDB is back."""
    server, db = own_mongodb
    await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    job, new = await submit(
        job_service(db, PublisherThen(publisher, server.stop)), example("encounter_package")
    )
    assert new and job["status"] == JobStatus.PENDING
    queue = JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8)
    consumer = JobConsumer(queue, make_processor(db))
    await consumer.start()
    try:
        await asyncio.sleep(1.5)  # the consumer holds the message while MongoDB is down
        server.start()
        deadline = time.monotonic() + 60
        while True:
            with_status = None
            try:
                with_status = await JobStore(db).get(job["_id"])
            except StoreUnavailable:
                pass
            if with_status and with_status["status"] != JobStatus.PENDING:
                break
            assert time.monotonic() < deadline, "the job stayed pending"
            await asyncio.sleep(0.2)
        assert with_status["status"] == JobStatus.PROCESSED
    finally:
        await consumer.stop(drain_seconds=5)


# --- the deadline rule ---


async def test_a_job_whose_message_waits_in_the_queue_is_left_alone(
    db, raw_publisher, publisher
) -> None:
    """A backlog: the job is far past its ETA, but its message is still ready in the queue
    (no consumer yet). Only the hard limit ends it, and the message then writes nothing."""
    submission = example("encounter_package")
    job_id = await pending_job(db, submission)
    await raw_publisher.publish(submission, message_id=job_id)
    reconciler = reconciler_for(db, ready_in(raw_publisher))
    for _ in range(8):  # well past the grace
        assert await reconciler.run_once() == []
        await asyncio.sleep(GRACE / 3)
    assert (await JobStore(db).get(job_id))["status"] == JobStatus.PENDING

    hard = reconciler_for(db, ready_in(raw_publisher), max_pending=GRACE)
    assert await hard.run_once() == [job_id]
    assert_ended(await JobStore(db).get(job_id))


async def test_the_queue_must_stay_empty_and_mongodb_answer_for_the_grace(db) -> None:
    """An overdue job with an empty queue is ended only after a series of runs, each with the
    queue empty and MongoDB answering, as long as the grace; a run that sees a ready message
    (or cannot tell) starts the series again."""
    depth = {"now": 0}

    async def queue_depth() -> int | None:
        return depth["now"]

    job_id = await pending_job(db, example("encounter_package"))
    await db["jobs"].update_one({"_id": job_id}, {"$set": {"eta": utcnow() - timedelta(hours=1)}})
    reconciler = reconciler_for(db, queue_depth)
    assert await reconciler.run_once() == []  # the series starts
    await asyncio.sleep(GRACE * 0.6)
    depth["now"] = 1  # a ready message: perhaps this job's
    assert await reconciler.run_once() == []
    depth["now"] = 0
    await asyncio.sleep(GRACE * 0.6)
    assert await reconciler.run_once() == []  # a new series, not long enough yet
    depth["now"] = None  # the broker cannot say
    assert await reconciler.run_once() == []
    depth["now"] = 0
    assert await reconciler.run_once() == []
    await asyncio.sleep(GRACE * 1.1)
    assert await reconciler.run_once() == [job_id]
    assert await reconciler.run_once() == []  # once


async def test_a_job_inserted_during_the_series_is_ended_once_it_is_grace_old(db) -> None:
    """The series began before the job: the job is ended once it has existed for the grace
    within the series, not only after a series that began after it."""

    async def empty() -> int:
        return 0

    reconciler = reconciler_for(db, empty)
    assert await reconciler.run_once() == []
    await asyncio.sleep(GRACE * 1.1)  # the series is older than the grace already
    job_id = await pending_job(db, example("encounter_package"))
    await db["jobs"].update_one({"_id": job_id}, {"$set": {"eta": utcnow() - timedelta(hours=1)}})
    # Its message may have been published right after it: not before it is grace old.
    assert await reconciler.run_once() == []
    await asyncio.sleep(GRACE * 0.5)
    assert await reconciler.run_once() == []
    await asyncio.sleep(GRACE * 0.6)
    assert await reconciler.run_once() == [job_id]


async def test_a_job_orphaned_while_the_reconciler_runs_is_ended_after_the_grace(db) -> None:
    """A healthy system: the reconciler has been running with the queue empty for a while,
    then a job loses its message (an API died between the insert and the publish). The same
    reconciler ends it once it is grace old, not JOB_MAX_PENDING_SECONDS later."""

    async def empty() -> int:
        return 0

    ended: list[str] = []
    reconciler = reconciler_for(db, empty, ended=ended)
    reconciler.start()
    try:
        await asyncio.sleep(GRACE * 2)
        before_insert = time.monotonic()
        job_id = await pending_job(db, example("encounter_package"))
        deadline = before_insert + 15
        while (await JobStore(db).get(job_id))["status"] == JobStatus.PENDING:
            assert time.monotonic() < deadline, "the orphaned job stayed pending"
            await asyncio.sleep(0.05)
        assert time.monotonic() - before_insert >= GRACE  # not before the grace
        assert_ended(await JobStore(db).get(job_id))
        assert ended == [job_id]
    finally:
        await reconciler.stop()


async def test_overdue_jobs_that_do_not_qualify_never_hide_those_that_do(db) -> None:
    """More jobs past their ETA but inserted too recently than the limit, listed first by
    ETA: the limit counts the qualifying jobs only."""
    store = JobStore(db)
    now = utcnow()
    recent = []
    for _ in range(5):
        job_id = await pending_job(db, example("encounter_package"))
        await db["jobs"].update_one({"_id": job_id}, {"$set": {"eta": now - timedelta(hours=3)}})
        recent.append(job_id)
    old = await pending_job(db, example("encounter_package"))
    two_hours_ago = now - timedelta(hours=2)
    await db["jobs"].update_one(
        {"_id": old},
        {
            "$set": {
                "eta": two_hours_ago,
                "inserted_at": two_hours_ago,
                "order_key": order_key(two_hours_ago, old),
            }
        },
    )
    found = await store.overdue(
        eta_before=now - timedelta(minutes=1),
        inserted_before=now - timedelta(hours=1),
        inserted_before_hard=None,
        limit=3,
    )
    assert found == [old]


async def test_set_aside_ends_a_pending_job_at_once_and_no_other(db) -> None:
    async def empty() -> int:
        return 0

    reconciler = reconciler_for(db, empty)
    job_id = await pending_job(db, example("encounter_package"))
    assert await reconciler.set_aside(job_id) is True
    assert_ended(await JobStore(db).get(job_id), SET_ASIDE)
    assert await reconciler.set_aside(job_id) is False  # terminal: never changed again
    assert await reconciler.set_aside("no-such-job") is False


@pytest.mark.timeout(90)
async def test_medevents_consumer_runs_the_reconciler(settings, db, tmp_path) -> None:
    """The wiring: `medevents consumer` (and so `medevents run`) reconciles every
    RECONCILE_INTERVAL_SECONDS. A job pending for two days meets the hard limit at once."""
    job_id = await pending_job(db, example("encounter_package"))
    two_days_ago = utcnow() - timedelta(days=2)
    await db["jobs"].update_one(
        {"_id": job_id},
        {"$set": {"order_key": order_key(two_days_ago, job_id), "eta": two_days_ago}},
    )
    process = start_medevents(
        "consumer",
        settings,
        tmp_path / "data",
        SIGNATURE_MODE="decode",
        RECONCILE_INTERVAL_SECONDS="1",
    )
    try:
        deadline = time.monotonic() + 60
        while (await JobStore(db).get(job_id))["status"] == JobStatus.PENDING:
            assert process.poll() is None, "the consumer exited"
            assert time.monotonic() < deadline, "the consumer's reconciler ended nothing"
            await asyncio.sleep(0.2)
        assert_ended(await JobStore(db).get(job_id))
    finally:
        process.terminate()
        process.wait(timeout=30)

"""Identical submissions to two API processes at once are one job: the database keeps one
pending job per submission (`pending_key`, a unique index), and the loser of the race
publishes nothing. A job handed to another API's client never disappears: when the broker
refuses its message, the job ends terminal instead of being removed."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumers.processors import builtin_registry
from service.bootstrap import Services
from service.domain.jobs import JobOutcome, JobStatus
from service.domain.principal import Principal
from service.messaging.broker import BrokerUnavailable, ready_messages
from service.storage.jobs import JobStore
from service.usecases.jobs import NOT_QUEUED, JobService
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, wait_for_jobs

WRITER = Principal.from_scope_text("user-1", DEMO_CLIENT, "job:read encounter:write")
TYPE = "encounter_package.create"
PER_API = 8


async def test_identical_submissions_to_two_apis_make_one_job(
    settings, db, patients, raw_publisher, start_consumer
) -> None:
    # Two API processes: each its own MongoDB client, publisher and in-process lock.
    async with (
        Services(settings, builtin_registry()) as first,
        Services(settings, builtin_registry()) as second,
    ):
        await first.jobs.ensure_indexes()
        job_type = builtin_registry().get(TYPE)
        assert job_type is not None
        data = example("encounter_package")["data"]
        apis = [first.job_service, second.job_service] * PER_API

        results = await asyncio.gather(
            *(
                api.submit(WRITER, job_type, ACTIVE_PATIENT, data, f"req-{n}")
                for n, api in enumerate(apis)
            )
        )
        job_ids = {job["_id"] for job, _ in results}
        assert len(job_ids) == 1
        assert [new for _, new in results].count(True) == 1
        assert await db["jobs"].count_documents({}) == 1
        # The losers published nothing: one message for the one job.
        assert await ready_messages(raw_publisher.queue) == 1

        await start_consumer()
        (job_id,) = job_ids
        jobs = await wait_for_jobs(db, [job_id])
        assert jobs[job_id]["status"] == JobStatus.PROCESSED
        assert "pending_key" not in jobs[job_id]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if await ready_messages(raw_publisher.queue) == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a second message would make a second job by now
        assert await db["jobs"].count_documents({}) == 1
        assert await raw_publisher.dead_letters(expected=1, timeout=0.5) == []

        # Once the job ended, the same submission is a new job (the key went with it). Its
        # entities exist now, so it ends 422: what matters here is that it is new.
        again, new = await second.job_service.submit(WRITER, job_type, ACTIVE_PATIENT, data, "r")
        assert new and again["_id"] != job_id


async def test_a_pending_job_of_the_key_is_returned_not_duplicated(settings, db, patients) -> None:
    """The store itself: a second insert with the same pending key returns the first job."""
    from tests.conftest import new_job

    async with Services(settings, builtin_registry()) as services:
        await services.jobs.ensure_indexes()
        first, new = await services.jobs.create_pending(new_job(hash="h"), pending_key="h")
        assert new
        second, new = await services.jobs.create_pending(new_job(hash="h"), pending_key="h")
        assert (second["_id"], new) == (first["_id"], False)
        # Jobs without a key (a producer's messages) are not limited.
        for _ in range(2):
            assert (await services.jobs.create_pending(new_job(hash="h")))[1]
        assert await services.jobs.finish(
            first["_id"], JobOutcome.processed([]), count_attempt=False
        )
        third, new = await services.jobs.create_pending(new_job(hash="h"), pending_key="h")
        assert new and third["_id"] != first["_id"]


async def test_a_job_another_api_handed_out_stays_when_the_broker_refuses_its_message(
    settings, db, patients
) -> None:
    """API A records the job and the broker refuses its message; meanwhile API B's identical
    request got A's job (202 with A's id). B's client polls that job and finds it ended
    (500, "submit it again"), never 404; A's client gets 503; a new identical submission is a
    new job."""
    job_type = builtin_registry().get(TYPE)
    assert job_type is not None
    data = example("encounter_package")["data"]
    async with Services(settings, builtin_registry()) as b_services:
        await b_services.jobs.ensure_indexes()
        api_b = b_services.job_service
        handed_to_b: list[tuple[dict, bool]] = []

        class RefusingAfterB:
            """A's broker: refuses the message, once B's identical request got its answer."""

            async def publish(self, *args, **kwargs) -> None:
                handed_to_b.append(await api_b.submit(WRITER, job_type, ACTIVE_PATIENT, data, "b"))
                raise BrokerUnavailable("the broker did not confirm the message")

        api_a = JobService(JobStore(db), RefusingAfterB())  # type: ignore[arg-type]
        with pytest.raises(BrokerUnavailable):  # A's client: 503
            await api_a.submit(WRITER, job_type, ACTIVE_PATIENT, data, "a")
        ((b_job, b_new),) = handed_to_b
        assert not b_new  # B deduplicated onto A's job

        polled = await api_b.job_for_client(b_job["_id"], DEMO_CLIENT)  # not JobNotFound: 404
        assert polled["status"] == JobStatus.FAILED_WITH_ERROR
        assert polled["status_code"] == 500
        assert polled["error"] == NOT_QUEUED.error
        assert "submit it again" in polled["error"]["message"].lower()
        assert "pending_key" not in (await db["jobs"].find_one({"_id": b_job["_id"]}))

        again, new = await api_b.submit(WRITER, job_type, ACTIVE_PATIENT, data, "again")
        assert new and again["_id"] != b_job["_id"]

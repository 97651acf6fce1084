"""The job store against the real driver and server: types that come back, atomic finish,
deduplication, indexes."""

from __future__ import annotations

import asyncio
from datetime import datetime

from schemas.jobs import JOB_RESPONSE_FIELDS
from service.domain.jobs import JobOutcome, JobStatus, Link
from service.storage.jobs import JobStore
from tests.conftest import new_job

DATETIME_FIELDS = ("eta", "inserted_at", "updated_at")


async def raw(db, job_id: str) -> dict:
    return await db["jobs"].find_one({"_id": job_id})


def assert_datetimes(document: dict) -> None:
    for name in DATETIME_FIELDS:
        value = document[name]
        assert isinstance(value, datetime), f"{name} came back as {type(value).__name__}: {value!r}"
        assert value.utcoffset().total_seconds() == 0


async def test_datetimes_come_back_as_datetimes_after_every_write(store, db) -> None:
    job, _ = await store.create_pending(new_job())
    created = await raw(db, job["_id"])
    assert_datetimes(created)
    assert created["status"] == JobStatus.PENDING and created["status_code"] == 202

    finished = await store.finish(job["_id"], JobOutcome.failed(409, "request_conflict", "x"))
    assert_datetimes(finished)
    stored = await raw(db, job["_id"])
    assert_datetimes(stored)
    assert stored["updated_at"] >= created["updated_at"]
    assert stored["eta"] == created["eta"]
    assert stored["inserted_at"] == created["inserted_at"]


async def test_written_job_document_has_every_field(store, db) -> None:
    new = new_job()
    await store.create_pending(new)
    await store.finish(new.job_id, JobOutcome.processed([Link("encounter", "/api/x")]))
    stored = await raw(db, new.job_id)
    assert stored["type"] == new.type
    assert stored["hash"] == new.hash
    assert (stored["client_id"], stored["user_id"]) == (new.client_id, new.user_id)
    assert stored["request_id"] == new.request_id
    assert stored["status"] == JobStatus.PROCESSED and stored["status_code"] == 200
    assert stored["response"] == [{"entity": "encounter", "href": "/api/x"}]
    assert isinstance(stored["attempts"], int)


async def test_a_terminal_job_is_never_changed_again(store, db) -> None:
    job, _ = await store.create_pending(new_job())
    assert await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "gone"))
    before = await raw(db, job["_id"])
    assert await store.finish(job["_id"], JobOutcome.processed([])) is None
    assert await store.finish(job["_id"], JobOutcome.failed_with_error("boom")) is None
    assert await raw(db, job["_id"]) == before


async def test_racing_finishers_win_once(store, db) -> None:
    job, _ = await store.create_pending(new_job())
    outcomes = [JobOutcome.failed(409, "request_conflict", f"writer {i}") for i in range(10)]
    results = await asyncio.gather(*(store.finish(job["_id"], o) for o in outcomes))
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert (await raw(db, job["_id"]))["error"] == winners[0]["error"]


async def test_finishing_an_unknown_job_does_nothing(store, db) -> None:
    assert await store.finish("no-such-job", JobOutcome.processed([])) is None
    assert await db["jobs"].count_documents({}) == 0


async def test_find_pending_finds_an_identical_pending_submission(store) -> None:
    first, _ = await store.create_pending(new_job(hash="same"))
    assert (await store.find_pending("same"))["_id"] == first["_id"]
    assert await store.find_pending("other") is None
    await store.finish(first["_id"], JobOutcome.processed([]))
    assert await store.find_pending("same") is None


async def test_same_job_id_twice_keeps_the_first(store, db) -> None:
    first, _ = await store.create_pending(new_job(job_id="producer-chosen-id"))
    second, created = await store.create_pending(new_job(job_id="producer-chosen-id"))
    assert not created
    assert second["hash"] == first["hash"]
    assert await db["jobs"].count_documents({}) == 1


async def test_get_for_client_projects_only_what_the_response_needs(store) -> None:
    job, _ = await store.create_pending(new_job(client_id="a"))
    found = await store.get_for_client(job["_id"], "a")
    assert set(found) == {"_id", *JOB_RESPONSE_FIELDS} - {"response", "error"}
    assert await store.get_for_client(job["_id"], "b") is None


async def test_indexes_are_created_idempotently(db) -> None:
    store = JobStore(db)
    await store.ensure_indexes()
    await store.ensure_indexes()
    keys = [index["key"] for index in (await db["jobs"].index_information()).values()]
    assert [("hash", 1), ("status", 1)] in keys
    assert [("status", 1), ("updated_at", 1)] in keys

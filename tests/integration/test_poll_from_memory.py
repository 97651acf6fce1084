"""Pending jobs answered from memory (`service.usecases.pending_polls`): a job an API process
has just read pending is answered without MongoDB until its finish event arrives, and never
longer than PENDING_JOB_CACHE_MS after that read, whatever happens to the event."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest

from schemas.envelope import Meta, dump_envelope
from service.api.keys import JOB_SERVICE
from service.api.responses import envelope
from service.api.views.jobs import PENDING_POLLS
from service.api.views.jobs import _rendered as render_job
from service.domain.jobs import JobOutcome
from service.usecases import pending_polls
from service.usecases.pending_polls import PendingPolls
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, bearer, new_job
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example
from tests.integration.conftest import app_for
from tests.rabbitmq_node import RabbitMQNode

WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


def counting_reads(api) -> list[str]:
    """The job ids the app reads from MongoDB from now on (a poll's read)."""
    store = api.app[JOB_SERVICE].store
    original = store.get_for_client
    reads: list[str] = []

    async def counted(job_id, client_id):
        reads.append(job_id)
        return await original(job_id, client_id)

    store.get_for_client = counted
    return reads


async def api_with(aiohttp_client, settings, **changes):
    api = await aiohttp_client(app_for(settings.with_changes(**changes)))
    await until(lambda: api.app[PENDING_POLLS].listening)  # subscribed to the events
    return api


async def until(condition, timeout: float = 10.0, step: float = 0.02) -> float:
    """Seconds until `condition()` holds (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the timeout"
        await asyncio.sleep(step)
    return time.monotonic() - started


async def status_of(api, job_id: str, client_id: str = CLIENT_ID) -> str:
    response = await api.get(
        f"/api/jobs/{job_id}", headers=bearer(client_id=client_id), allow_redirects=False
    )
    return (await response.json())["data"]["status"]


async def test_a_pending_job_polled_again_is_answered_from_memory(
    aiohttp_client, settings, store
) -> None:
    """The same answer as a read gives (data, ETag, Retry-After, 304 on If-None-Match), with
    each request's own `meta`; one read for many polls; another client's poll is a 404."""
    api = await api_with(aiohttp_client, settings, pending_job_cache_ms=10_000)
    job, _ = await store.create_pending(new_job(eta=datetime.now(UTC) + timedelta(seconds=12)))
    url = f"/api/jobs/{job['_id']}"
    reads = counting_reads(api)

    first = await api.get(url, headers=bearer())
    assert first.status == 200 and reads == [job["_id"]]
    assert len(api.app[PENDING_POLLS]) == 1
    for n in range(5):
        again = await api.get(url, headers={**bearer(), "X-Request-Id": f"poll-{n}"})
        body = await again.json()
        assert again.status == 200 and body["data"] == (await first.json())["data"]
        assert body["data"]["status"] == "pending"
        assert body["meta"] == {
            "code": 200,
            "url": str(api.make_url(url)),
            "type": "object",
            "request_id": f"poll-{n}",
        }
        assert again.headers["ETag"] == first.headers["ETag"]
        assert 10 <= int(again.headers["Retry-After"]) <= 12
        assert again.headers["x-request-id"] == f"poll-{n}"
    conditional = await api.get(url, headers={**bearer(), "If-None-Match": first.headers["ETag"]})
    assert conditional.status == 304 and conditional.headers["ETag"] == first.headers["ETag"]
    assert 10 <= int(conditional.headers["Retry-After"]) <= 12
    assert reads == [job["_id"]]  # one read for seven polls

    # Kept for its client only: another client's poll reads MongoDB and is a 404, as before.
    other = await api.get(url, headers=bearer(client_id=OTHER_CLIENT_ID))
    assert other.status == 404 and reads == [job["_id"]] * 2
    # A long poll reads MongoDB, as it always has.
    waited = await api.get(f"{url}?wait=0.2", headers=bearer())
    assert (await waited.json())["data"]["status"] == "pending" and len(reads) > 2


async def test_a_finish_is_seen_at_once_through_its_event(
    aiohttp_client, settings, db, patients, start_consumer
) -> None:
    """With a bound of 10 s, the consumer's job-finished event alone ends the memory of the
    job: the next poll reads it finished, within moments of its write."""
    api = await api_with(aiohttp_client, settings, pending_job_cache_ms=10_000)
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    submitted = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
    assert submitted.status == 202
    job_id = (await submitted.json())["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    assert await status_of(api, job_id) == "pending"  # no consumer yet: it stays pending
    assert await status_of(api, job_id) == "pending"
    assert len(api.app[PENDING_POLLS]) == 1

    await start_consumer()
    started = time.monotonic()
    seen = {await status_of(api, job_id)}
    while "pending" in seen and time.monotonic() - started < 5:  # far within the bound
        await asyncio.sleep(0.01)
        seen = {await status_of(api, job_id)}
    answered = datetime.now(UTC)
    assert seen == {"processed"}
    finished = (await db["jobs"].find_one({"_id": job_id}))["updated_at"]
    assert (answered - finished).total_seconds() < 0.5
    assert len(api.app[PENDING_POLLS]) == 0


async def test_a_finish_without_an_event_is_seen_within_the_bound(
    aiohttp_client, settings, store
) -> None:
    """A finish whose event is lost (here: written in MongoDB, no event sent) is answered
    pending from memory for at most PENDING_JOB_CACHE_MS after the read that kept it."""
    api = await api_with(aiohttp_client, settings, pending_job_cache_ms=500)
    job, _ = await store.create_pending(new_job())
    read_before = time.monotonic()
    assert await status_of(api, job["_id"]) == "pending"
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    finished_at = time.monotonic()
    assert await status_of(api, job["_id"]) == "pending"  # from memory: no event came

    statuses = [await status_of(api, job["_id"])]
    while statuses[-1] == "pending" and time.monotonic() - finished_at < 5:
        await asyncio.sleep(0.01)
        statuses.append(await status_of(api, job["_id"]))
    seen_at = time.monotonic()
    assert seen_at - read_before < 0.5 + 0.1  # the bound, and one poll's time
    assert seen_at - finished_at < 0.5 + 0.1
    assert set(statuses) == {"pending", "failed"}


async def test_without_the_event_subscription_nothing_is_answered_from_memory(
    aiohttp_client, settings, store, rabbitmq_node: RabbitMQNode
) -> None:
    """The API's connection to the broker cut (on a node of the tests' own): every kept job
    is forgotten and nothing is kept until the subscription is back (an event sent meanwhile
    is lost); a finish written then is read at once; once subscribed again, polls are
    answered from memory again."""
    before = await asyncio.to_thread(rabbitmq_node.connections)
    api = await api_with(
        aiohttp_client,
        settings,
        amqp_url=rabbitmq_node.amqp_url,
        pending_job_cache_ms=10_000,
    )
    polls = api.app[PENDING_POLLS]
    job, _ = await store.create_pending(new_job())
    assert await status_of(api, job["_id"]) == "pending"
    assert len(polls) == 1

    opened = await asyncio.to_thread(rabbitmq_node.connections)
    assert opened - before  # the API's subscription (and its publisher's)
    for pid in opened - before:
        await asyncio.to_thread(rabbitmq_node.close_connection, pid)
    await until(lambda: not polls.listening)
    assert len(polls) == 0
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    assert await status_of(api, job["_id"]) == "failed"  # read: nothing was kept

    await until(lambda: polls.listening, timeout=30)  # aio-pika re-subscribes by itself
    again, _ = await store.create_pending(new_job())
    reads = counting_reads(api)
    assert await status_of(api, again["_id"]) == "pending"
    assert await status_of(api, again["_id"]) == "pending"
    assert reads == [again["_id"]]


async def test_the_pending_jobs_kept_are_bounded_in_bytes_and_the_oldest_go(
    aiohttp_client, settings, store, db
) -> None:
    api = await api_with(aiohttp_client, settings, pending_job_cache_ms=10_000)
    polls = api.app[PENDING_POLLS]
    bound = 20 * 1024
    polls.max_bytes = bound
    job_ids = []
    for _ in range(60):  # about 80 KB counted: four times the bound
        job, _ = await store.create_pending(new_job())
        job_ids.append(job["_id"])
        assert await status_of(api, job["_id"]) == "pending"
        assert 0 < polls.bytes_kept <= bound
    assert 10 <= len(polls) <= 20

    # Kept: the newest, answered with MongoDB's copy gone (within the bound); gone: the
    # oldest, read afresh.
    await db["jobs"].delete_many({"_id": {"$in": job_ids}})
    assert (await api.get(f"/api/jobs/{job_ids[-1]}", headers=bearer())).status == 200
    assert (await api.get(f"/api/jobs/{job_ids[0]}", headers=bearer())).status == 404


def pending_job(job_id: str) -> dict:
    now = datetime.now(UTC)
    return {"_id": job_id, "status": 0, "eta": now + timedelta(seconds=30)}


def test_what_a_kept_pending_job_counts_is_what_it_costs_in_memory() -> None:
    polls = PendingPolls(keep_seconds=60)
    polls.events_resumed()
    count = 500
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            job_id = f"{n:032x}"
            job = pending_job(job_id)
            status, data, tag = render_job(job)
            polls.keep(job_id, CLIENT_ID, time.monotonic(), (status, data, tag), job["eta"])
            assert polls.get(job_id, CLIENT_ID) is not None
        del job, data
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(polls) == count
    assert used <= polls.bytes_kept, (used / count, polls.bytes_kept / count)
    assert polls.bytes_kept / count < 1.5 * 1024


def test_a_finish_heard_while_the_read_was_in_flight_keeps_nothing(monkeypatch) -> None:
    """The read began, the finish event came, then the read answered pending: not kept."""
    now = 1000.0
    monkeypatch.setattr(pending_polls.time, "monotonic", lambda: now)
    polls = PendingPolls(keep_seconds=1)
    job = pending_job("a" * 32)
    response = render_job(job)
    polls.keep(job["_id"], CLIENT_ID, now, response, job["eta"])
    assert polls.get(job["_id"], CLIENT_ID) is None  # not listening yet: nothing kept

    polls.events_resumed()
    read_at = now = 1001.0
    now += 0.01
    polls.jobs_finished([job["_id"]])
    now += 0.01
    polls.keep(job["_id"], CLIENT_ID, read_at, response, job["eta"])
    assert polls.get(job["_id"], CLIENT_ID) is None

    now += 2  # a read begun after the finish was heard (a new job with the same id cannot
    read_at = now  # be, but the rule is the time): kept, for its bound only
    polls.keep(job["_id"], CLIENT_ID, read_at, response, job["eta"])
    assert polls.get(job["_id"], CLIENT_ID) is not None
    assert polls.get(job["_id"], OTHER_CLIENT_ID) is None
    now += 0.99
    assert polls.get(job["_id"], CLIENT_ID) is not None
    now += 0.01
    assert polls.get(job["_id"], CLIENT_ID) is None and len(polls) == 0
    # A read too old when it answers, or begun before the events resumed, keeps nothing.
    polls.keep(job["_id"], CLIENT_ID, now - 1, response, job["eta"])
    polls.events_resumed()
    polls.keep(job["_id"], CLIENT_ID, now - 0.001, response, job["eta"])
    assert len(polls) == 0


@pytest.mark.parametrize("keep_seconds", [0, 1])
def test_nothing_is_kept_with_a_bound_of_zero_or_while_interrupted(keep_seconds) -> None:
    polls = PendingPolls(keep_seconds=keep_seconds)
    polls.events_resumed()
    job = pending_job("b" * 32)
    if keep_seconds:
        polls.events_interrupted()
    polls.keep(job["_id"], CLIENT_ID, time.monotonic(), render_job(job), job["eta"])
    assert len(polls) == 0 and polls.get(job["_id"], CLIENT_ID) is None


@pytest.mark.parametrize("status", [200, 303])
def test_the_envelope_made_directly_is_what_its_schema_dumps(status) -> None:
    data = {"status": "processed", "links": []}
    url, request_id = "https://api.example/api/jobs/x", "req-1"
    assert envelope(data, status, url, request_id) == dump_envelope(
        data, Meta(status, url, request_id)
    )

"""Long poll: `?wait=N` and `Prefer: wait=N` answer as soon as the job leaves pending, woken
by the consumer's job-finished event through the broker, not by reading MongoDB in a loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import orjson

from service.api.keys import JOB_SERVICE
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example

READ = bearer(client_id=DEMO_CLIENT)
WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


async def submitted(api) -> str:
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    response = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
    body = await response.json()
    assert response.status == 202, body
    return body["data"]["links"][0]["href"].rsplit("/", 1)[-1]


async def test_the_answer_comes_within_200_ms_of_the_job_finishing(api, db, start_consumer):
    job_id = await submitted(api)  # no consumer yet: it stays pending
    reads = 0
    service = api.app[JOB_SERVICE]
    original = service.store.get_for_client

    async def counted(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await original(*args, **kwargs)

    service.store.get_for_client = counted
    polling = asyncio.create_task(
        api.get(f"/api/jobs/{job_id}?wait=20", headers=READ, allow_redirects=False)
    )
    await asyncio.sleep(1.0)  # the request is waiting
    assert not polling.done()
    reads_while_waiting = reads
    await start_consumer()

    response = await polling
    answered = datetime.now(UTC)
    body = await response.json()
    assert response.status == 303 and body["data"]["status"] == "processed"
    finished = (await db["jobs"].find_one({"_id": job_id}))["updated_at"]
    assert (answered - finished).total_seconds() < 0.2
    assert reads_while_waiting == 2 and reads == 3  # read, re-read on listening, read at the end


async def test_a_wait_that_runs_out_answers_pending(api, patients):
    job_id = await submitted(api)
    started = time.monotonic()
    response = await api.get(f"/api/jobs/{job_id}", headers={**READ, "Prefer": "wait=0.5"})
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert (await response.json())["data"]["status"] == "pending"
    assert response.headers["Preference-Applied"] == "wait=0.5"
    assert 0.45 <= elapsed < 5


async def test_a_finished_job_answers_at_once_whatever_the_wait(api, db, start_consumer):
    await start_consumer()
    job_id = await submitted(api)
    for _ in range(100):
        if (await db["jobs"].find_one({"_id": job_id}))["status"] != 0:
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    response = await api.get(f"/api/jobs/{job_id}?wait=30", headers=READ, allow_redirects=False)
    assert response.status == 303 and time.monotonic() - started < 1


async def test_the_events_subscription_is_retried_until_the_broker_answers(settings):
    from service.messaging.broker import Topology
    from service.messaging.job_events import JobEvents
    from service.storage.embedded import free_port

    events = JobEvents(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/", Topology(settings.amqp_prefix)
    )
    await events.start()
    try:
        assert not events.subscribed
        events._url = settings.amqp_url  # the broker is back
        for _ in range(100):
            if events.subscribed:
                break
            await asyncio.sleep(0.1)
        assert events.subscribed
    finally:
        await events.close()


async def test_jobs_finishing_together_go_out_as_one_event_and_wake_every_waiter(settings):
    """Over the real broker: the consumer's batches reach the API's subscription, and every
    waiting request of the batch wakes; a batch is split at `MAX_IDS`."""
    import aio_pika

    from service.messaging.broker import Topology
    from service.messaging.job_events import FinishedEvents, JobEvents, declare_events_exchange

    topology = Topology(settings.amqp_prefix)
    events = JobEvents(settings.amqp_url, topology)
    await events.start()
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await declare_events_exchange(channel, topology)
        published: list[list[str]] = []
        original = exchange.publish

        async def counting_publish(message, routing_key, **kwargs):
            published.append(orjson.loads(message.body)["job_ids"])
            return await original(message, routing_key, **kwargs)

        exchange.publish = counting_publish
        finished = FinishedEvents(exchange)
        job_ids = [f"job-{n}" for n in range(FinishedEvents.MAX_IDS + 20)]
        with contextlib.ExitStack() as stack:
            waiters = [stack.enter_context(events.waiting_for(job_id)) for job_id in job_ids]
            for job_id in job_ids:
                finished.add(job_id)
            await finished.close()
            async with asyncio.timeout(5):
                for waiter in waiters:
                    await waiter.wait()
        assert [len(batch) for batch in published] == [FinishedEvents.MAX_IDS, 20]
        assert [job_id for batch in published for job_id in batch] == job_ids
    finally:
        await connection.close()
        await events.close()

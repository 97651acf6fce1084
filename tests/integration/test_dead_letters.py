"""The dead-letter queue: counted, and replayed by a documented command (processed when its
job is still pending or has none)."""

from __future__ import annotations

import asyncio

import aio_pika
import orjson

from service.cli.main import main
from service.domain.jobs import JobStatus, new_job_id
from service.messaging.broker import DELIVERY_LIMIT
from service.messaging.dead_letters import DeadLetters
from tests.harness import example, wait_for_jobs

# What the broker writes into a message while dead-lettering or redelivering it.
DEATH_HEADERS = ("x-death", "x-first-death-reason")


async def dead_letter(raw_publisher, body: bytes, **properties) -> None:
    """Put a message into the dead queue as the broker does: through the dead exchange."""
    exchange = await raw_publisher.channel.get_exchange(raw_publisher.topology.dead_exchange)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
        routing_key="encounter_package.create",
    )


async def test_replayed_dead_letters_are_processed(db, settings, raw_publisher, start_consumer):
    import orjson

    await start_consumer()
    job_ids = [new_job_id() for _ in range(3)]
    for job_id in job_ids:
        await dead_letter(
            raw_publisher,
            orjson.dumps(example("encounter_package")),
            message_id=job_id,
            headers={"x-request-id": f"req-{job_id}", "x-death": [{"count": 20}]},
        )
    await asyncio.sleep(0.3)
    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).count() == 3

    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).replay(limit=2) == 2
    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).count() == 1
    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).replay() == 1

    jobs = await wait_for_jobs(db, job_ids)
    assert all(job["status"] == JobStatus.PROCESSED for job in jobs.values())
    assert {job["request_id"] for job in jobs.values()} == {f"req-{j}" for j in job_ids}
    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).count() == 0


async def test_a_message_that_fails_again_goes_back_once(settings, raw_publisher, start_consumer):
    await start_consumer()
    await dead_letter(raw_publisher, b"garbage", message_id="../not-a-job-id")
    await asyncio.sleep(0.3)
    assert await DeadLetters(settings.amqp_url, raw_publisher.topology).replay() == 1
    dead = await raw_publisher.dead_letters(expected=1)
    assert [message.body for message in dead] == [b"garbage"]


async def next_message(queue, timeout: float = 10) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(int(timeout / 0.05)):
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message in {queue.name} within {timeout} s")


async def take_both(queue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Two messages of `queue`, put back unchanged (but for the broker's delivery count)."""
    taken = [await next_message(queue), await next_message(queue)]
    for message in taken:
        await message.nack(requeue=True)
    return taken


async def test_replay_leaves_out_what_the_broker_wrote_while_dead_lettering(
    db, settings, raw_publisher, start_consumer
):
    """Messages dead-lettered by the broker itself (one rejected after being returned to the
    queue 3 times, as the consumer rejects what it cannot use; one returned until the
    delivery limit ran out) carry `x-death` and `x-delivery-count`; replayed, they carry
    neither (a stale `x-delivery-count` would make the consumer take a replayed message's
    first delivery for its last), and keep the producer's id and request id."""
    rejected, exhausted = new_job_id(), new_job_id()
    submissions = {rejected: example("encounter_package"), exhausted: example("encounter_package")}
    for job_id, submission in submissions.items():
        await raw_publisher.publish(
            submission, message_id=job_id, headers={"x-request-id": f"req-{job_id}"}
        )
    jobs_queue = raw_publisher.queue
    returned = {rejected: 0, exhausted: 0}
    while True:  # no consumer yet: the test settles each delivery as a failing one would
        message = await jobs_queue.get(no_ack=False, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            if (message := await jobs_queue.get(no_ack=False, fail=False)) is None:
                break
        if message.message_id == rejected and returned[rejected] == 3:
            await message.reject(requeue=False)
            continue
        returned[message.message_id] += 1
        await message.nack(requeue=True)
    assert returned == {rejected: 3, exhausted: DELIVERY_LIMIT + 1}

    dead_queue = await raw_publisher.channel.declare_queue(
        raw_publisher.topology.dead_queue, passive=True
    )
    await take_both(dead_queue)  # an operator looks at them first, and puts them back
    dead = {message.message_id: message.headers for message in await take_both(dead_queue)}
    assert set(dead) == {rejected, exhausted}
    for job_id, headers in dead.items():  # what the replay reads
        assert all(header in headers for header in DEATH_HEADERS), (job_id, headers)
        assert headers["x-delivery-count"] >= 1, (job_id, headers)
    assert dead[rejected]["x-first-death-reason"] in (b"rejected", "rejected")
    assert dead[exhausted]["x-first-death-reason"] in (b"delivery_limit", "delivery_limit")

    # The messages as the replay publishes them: a quorum queue writes its own
    # `x-delivery-count` into each delivery, so a classic queue bound beside the jobs queue
    # shows what was sent.
    tap = await raw_publisher.channel.declare_queue(exclusive=True, auto_delete=True)
    await tap.bind(raw_publisher.exchange, routing_key="#")
    dead_letters = DeadLetters(settings.amqp_url, raw_publisher.topology)
    assert await dead_letters.replay() == 2

    sent = {message.message_id: message for message in await take_both(tap)}
    replayed = {message.message_id: message for message in await take_both(jobs_queue)}
    assert set(sent) == set(replayed) == {rejected, exhausted}
    for job_id in submissions:
        assert sent[job_id].headers == {"x-request-id": f"req-{job_id}"}, sent[job_id].headers
        assert orjson.loads(sent[job_id].body) == submissions[job_id]
        headers = replayed[job_id].headers or {}
        assert not [key for key in headers if "death" in key], (job_id, headers)
        assert headers.get("x-delivery-count", 0) == 0, (job_id, headers)
        assert headers["x-request-id"] == f"req-{job_id}"

    await start_consumer()
    jobs = await wait_for_jobs(db, list(submissions))
    assert [job["status"] for job in jobs.values()] == [JobStatus.PROCESSED] * 2
    assert {job["request_id"] for job in jobs.values()} == {f"req-{j}" for j in submissions}
    assert await dead_letters.count() == 0


def test_the_command(settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AMQP_PREFIX", settings.amqp_prefix)
    assert main(["dead-letters", "count"]) == 0
    assert capsys.readouterr().out.strip() == "0"
    assert main(["dead-letters", "replay", "--limit", "5"]) == 0
    assert capsys.readouterr().out.strip() == "replayed 0"


async def test_redeliveries_past_the_limit_land_in_the_dead_queue(raw_publisher):
    """The topology itself: a message returned more often than the delivery limit allows is
    dead-lettered by the broker (what a message that crashes every consumer would meet)."""
    from service.messaging.broker import DELIVERY_LIMIT

    await raw_publisher.publish(b'{"poison": true}', message_id="crashes-everything")
    returned = 0
    for _ in range(DELIVERY_LIMIT + 5):
        message = await raw_publisher.queue.get(no_ack=False, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            message = await raw_publisher.queue.get(no_ack=False, fail=False)
            if message is None:
                break
        await message.nack(requeue=True)
        returned += 1
    assert returned == DELIVERY_LIMIT + 1  # the first delivery and DELIVERY_LIMIT more
    dead = await raw_publisher.dead_letters(expected=1)
    assert [message.message_id for message in dead] == ["crashes-everything"]

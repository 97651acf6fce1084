"""The dead-letter queue: counted, and replayed into processing by a documented command."""

from __future__ import annotations

import asyncio

import aio_pika

from service.cli.main import main
from service.domain.jobs import JobStatus, new_job_id
from service.messaging.dead_letters import DeadLetters
from tests.harness import example, wait_for_jobs


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

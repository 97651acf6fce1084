"""The dead-letter queue: how many messages wait there, and replaying them.

Messages land in `medical_events.dead` when the consumer cannot use them (no usable job id, a
job id taken by another submission) or when the broker's delivery limit runs out. Replaying
publishes each one again to `medical_events`, with its routing key, id, request id and
properties, and then removes it from the dead queue: once the cause is fixed, the jobs run.
A replay takes at most the messages there when it starts, so a message that fails again is not
replayed twice in one run.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import aio_pika
from aio_pika.abc import AbstractQueue

from service.messaging.broker import CONNECT_TIMEOUT_SECONDS, Topology, declare_topology

# Headers the broker wrote while dead-lettering or redelivering: not the producer's.
BROKER_HEADERS = (
    "x-death",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


async def _dead_queue(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> AbstractQueue:
    await declare_topology(channel, topology)
    return await channel.declare_queue(topology.dead_queue, passive=True)


async def count_dead_letters(amqp_url: str, topology: Topology) -> int:
    connection = await aio_pika.connect(amqp_url, timeout=CONNECT_TIMEOUT_SECONDS)
    async with connection:
        channel = await connection.channel()
        queue = await _dead_queue(channel, topology)
        return queue.declaration_result.message_count or 0


async def replay_dead_letters(
    amqp_url: str,
    topology: Topology,
    limit: int | None = None,
    job_ids: Collection[str] | None = None,
) -> int:
    """Publish dead letters again, oldest first; returns how many were replayed. With
    `job_ids`, only the messages of those jobs: the others are held until the end of the run
    and then go back to the dead queue as they were."""
    connection = await aio_pika.connect(amqp_url, timeout=CONNECT_TIMEOUT_SECONDS)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, _ = await declare_topology(channel, topology)
        queue = await _dead_queue(channel, topology)
        waiting = queue.declaration_result.message_count or 0
        todo = waiting if limit is None else min(limit, waiting)
        wanted = None if job_ids is None else set(job_ids)
        replayed = 0
        for _ in range(waiting):
            if replayed >= todo:
                break
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            if wanted is not None and _job_id(message) not in wanted:
                continue  # held, unacked: requeued when the channel closes
            await exchange.publish(
                _copy_of(message), routing_key=message.routing_key or "replayed", mandatory=True
            )
            await message.ack()  # only once the broker confirmed the copy
            replayed += 1
        return replayed


def _job_id(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The job id the consumer gave the message (derived from the body when the producer set
    no `message_id`), so that every dead letter the dashboard shows can be replayed by it."""
    from consumers.consumer import job_id_of  # the consumer's own rule; imported late
    from service.usecases.processing import parse_body

    if message.message_id is not None:
        return message.message_id
    return job_id_of(message, parse_body(message.body))


def _copy_of(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
    """The message as its producer sent it: the broker's own headers left out."""
    headers: dict[str, Any] = {
        key: value for key, value in (message.headers or {}).items() if key not in BROKER_HEADERS
    }
    return aio_pika.Message(
        message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        content_type=message.content_type,
        timestamp=message.timestamp,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )

"""The dead-letter queue: how many messages wait there, and replaying them.

Messages land in `medical_events.dead` when the consumer cannot use them (no usable job id, a
job id taken by another submission) or when the broker's delivery limit runs out. Replaying
publishes each one again to `medical_events`, with its routing key, id, request id and
properties, and then removes it from the dead queue: once the cause is fixed, a message whose
job is still pending (or has none yet) is processed; one whose job has ended (set aside at its
last delivery, or by the reconciler) finds it terminal and writes nothing.
A replay takes at most the messages there when it starts, so a message that fails again is not
replayed twice in one run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from service.messaging.broker import (
    CONNECT_TIMEOUT_SECONDS,
    CONNECTION_EXCEPTIONS,
    BrokerUnavailable,
    Topology,
    declare_topology,
)

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


class DeadLetters:
    """The dead-letter queue of one topology. Each call opens a connection of its own and
    closes it: operators count and replay now and then, never on a hot path."""

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self._url = amqp_url
        self._topology = topology

    async def count(self) -> int:
        """The messages in the dead queue; `BrokerUnavailable` when the broker cannot say."""
        try:
            connection = await aio_pika.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
            async with connection:
                channel = await connection.channel()
                queue = await self._dead_queue(channel)
                return queue.declaration_result.message_count or 0
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc

    async def replay(
        self,
        limit: int | None = None,
        select: Callable[[AbstractIncomingMessage], bool] | None = None,
    ) -> int:
        """Publish dead letters again, oldest first; returns how many were replayed. With
        `select`, only the messages it selects: the others are held until the end of the run
        and then go back to the dead queue as they were. `BrokerUnavailable` when the broker
        cannot be reached (what was replayed before stays replayed)."""
        try:
            return await self._replay(limit, select)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc

    async def _replay(
        self, limit: int | None, select: Callable[[AbstractIncomingMessage], bool] | None
    ) -> int:
        connection = await aio_pika.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange, _ = await declare_topology(channel, self._topology)
            queue = await self._dead_queue(channel)
            waiting = queue.declaration_result.message_count or 0
            todo = waiting if limit is None else min(limit, waiting)
            replayed = 0
            for _ in range(waiting):
                if replayed >= todo:
                    break
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                if select is not None and not select(message):
                    continue  # held, unacked: requeued when the channel closes
                await exchange.publish(
                    _copy_of(message), routing_key=message.routing_key or "replayed", mandatory=True
                )
                await message.ack()  # only once the broker confirmed the copy
                replayed += 1
            return replayed

    async def _dead_queue(self, channel: AbstractChannel) -> AbstractQueue:
        await declare_topology(channel, self._topology)
        return await channel.declare_queue(self._topology.dead_queue, passive=True)


def _copy_of(message: AbstractIncomingMessage) -> aio_pika.Message:
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

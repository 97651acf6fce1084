"""The consumer's side of the broker: its connection, the jobs queue it consumes, the
job-finished events it sends, and the replies to producers that asked for one.

The consumer itself (`consumers.consumer`) decides what to do with each delivery; this adapter
only talks to RabbitMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from service.messaging.broker import (
    Topology,
    connect,
    declare_topology,
    may_reply_to,
    ready_messages,
)
from service.messaging.job_events import FinishedEvents, declare_events_exchange

# The lines of the consumer's broker side are the consumer's.
log = structlog.get_logger("medevents.consumer")

CONNECT_BACKOFF_MAX = 30.0
CANCEL_TIMEOUT_SECONDS = 5.0

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


async def handle_shielded(
    in_flight: set[asyncio.Task], handling: Coroutine[Any, Any, None]
) -> None:
    """aio-pika's task for a delivery: `handling` runs in a task of our own, kept in
    `in_flight` while it runs (a stop waits for them), shielded: aiormq cancels its delivery
    tasks when the channel closes, and a cancellation that lands inside a driver call can
    leave the driver's locks held for good."""
    task = asyncio.create_task(handling)
    in_flight.add(task)
    task.add_done_callback(in_flight.discard)
    await asyncio.shield(task)


def channel_closed(message: AbstractIncomingMessage) -> bool:
    """Whether the channel a message came on is gone (it can be settled no more)."""
    try:
        channel = message.channel  # raises once the channel is closed
    except CONNECTION_EXCEPTIONS:
        return True
    return channel is None or channel.is_closed


class JobQueue:
    def __init__(self, amqp_url: str, topology: Topology, *, prefetch: int) -> None:
        self._url = amqp_url
        self._topology = topology
        self.prefetch = prefetch
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._events: FinishedEvents | None = None
        self._consumer_tag: str | None = None

    @property
    def name(self) -> str:
        return self._topology.queue

    async def consume(self, on_message: OnMessage) -> None:
        """Connect (waiting for the broker while it is down), declare the topology, and hand
        each delivery to `on_message`, `prefetch` of them at most at once."""
        delay = 1.0
        while True:
            try:
                self._connection = await connect(self._url)
                break
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("broker_unavailable_at_start", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX)
        self._channel = channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        _, self._queue = await declare_topology(channel, self._topology)
        self._events = FinishedEvents(await declare_events_exchange(channel, self._topology))
        self._consumer_tag = await self._queue.consume(on_message)

    async def cancel(self) -> None:
        """No more deliveries; those in flight stay ours to settle."""
        if self._queue is None or self._consumer_tag is None:
            return
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                await self._queue.cancel(self._consumer_tag)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("consumer_cancel_failed", error=repr(exc))

    async def settle(self, message: AbstractIncomingMessage, how: str) -> None:
        """Ack, nack (requeue) or reject (dead-letter) a message. When the channel it came on
        is gone, nothing can be settled: the broker delivers it again, and processing is
        repeatable, so that is only logged."""
        try:
            if how == "ack":
                await message.ack()
            elif how == "nack":
                await message.nack(requeue=True)
            else:
                await message.reject(requeue=False)
        except CONNECTION_EXCEPTIONS as exc:
            log.warning("message_not_settled", how=how, error=repr(exc))

    def finished(self, job_id: str) -> None:
        """Tell the APIs that `job_id` finished (its long polls wake), batched with others."""
        if self._events is not None:
            self._events.add(job_id)

    async def reply(self, message: AbstractIncomingMessage, job_id: str, href: str) -> None:
        """Tell a producer that set `reply_to` which job its message became; a `reply_to`
        that names a queue of the service (`may_reply_to`) gets nothing, and is logged."""
        assert self._channel is not None
        if not may_reply_to(message.reply_to or ""):
            log.warning("reply_refused", reply_to=(message.reply_to or "")[:100])
            return
        reply = aio_pika.Message(
            orjson.dumps({"job_id": job_id, "href": href}),
            correlation_id=message.correlation_id,
            content_type="application/json",
        )
        try:
            await self._channel.default_exchange.publish(reply, routing_key=message.reply_to or "")
        except CONNECTION_EXCEPTIONS as exc:
            log.warning("reply_failed", error=repr(exc))

    async def depth(self) -> int | None:
        """Messages ready in the jobs queue now; None when the broker cannot say."""
        return await ready_messages(self._queue)

    async def close(self) -> None:
        """Send the events still batched, then close the connection: deliveries not settled
        by then go back to the queue."""
        events, self._events = self._events, None
        connection, self._connection = self._connection, None
        if events is not None:
            await events.close()
        if connection is not None:
            await connection.close()

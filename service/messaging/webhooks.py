"""RabbitMQ for webhooks: the queue the `medevents webhooks` process consumes, a delay queue
per step of the retry schedule, and the webhooks' own dead letters.

    exchange medical_events.webhooks (direct, durable)
      --deliver--> queue medical_events.webhooks
                   (quorum, delivery limit, dead-lettered to "dead" past it)
      --retry.<ms>ms--> queue medical_events.webhooks.retry.<ms>ms, one per schedule step
                   (classic, durable; each message's `expiration` is the step's delay with
                   jitter; expired messages are dead-lettered back with the key "deliver")
      --dead--> queue medical_events.webhooks.dead (quorum)

One delay queue per step, because RabbitMQ expires messages only at the head of a queue: in a
queue of one step every message waits about as long, so none waits behind a longer one by
more than the step's jitter. A message's body is the webhook's JSON body, signed as it is; its
headers carry the endpoint, the client, the job, the event type, its webhook id and the
attempt it is for (`WebhookMessage`). Every message is persistent and every publish confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from service.messaging.broker import (
    CONNECT_TIMEOUT_SECONDS,
    CONNECTION_EXCEPTIONS,
    PUBLISH_TIMEOUT_SECONDS,
    BrokerUnavailable,
    ServiceNames,
    connect,
    declare_dead_letter_queue,
    declare_work_queue,
)

DELIVER = "deliver"
DEAD = "dead"


@dataclass(frozen=True, slots=True)
class WebhookTopology(ServiceNames):
    """Names of the webhooks' exchange and queues, by the rule of `broker.Topology`'s."""

    @property
    def exchange(self) -> str:
        return self.name("webhooks")

    @property
    def queue(self) -> str:
        return self.name("webhooks")

    @property
    def dead_queue(self) -> str:
        return self.name("webhooks", DEAD)

    def delay_queue(self, delay_ms: int) -> str:
        return self.name("webhooks", delay_key(delay_ms))


def delay_key(delay_ms: int) -> str:
    return f"retry.{delay_ms}ms"


@dataclass(frozen=True, slots=True)
class WebhookMessage:
    """What one message asks: send `body` to an endpoint, as attempt `attempt` (from 1)."""

    webhook_id: str
    endpoint_id: str
    client_id: str
    job_id: str
    event_type: str
    attempt: int
    body: bytes
    # Times this attempt was deferred, its endpoint at its cap (`WebhookDeliveries.defer`).
    deferrals: int = 0

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            "x-webhook-id": self.webhook_id,
            "x-endpoint-id": self.endpoint_id,
            "x-client-id": self.client_id,
            "x-job-id": self.job_id,
            "x-event-type": self.event_type,
            "x-attempt": self.attempt,
        }
        if self.deferrals:
            headers["x-deferrals"] = self.deferrals
        return headers

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> WebhookMessage | None:
        """The message's webhook; None when its headers are not ours."""
        headers = message.headers or {}
        attempt = headers.get("x-attempt", 1)
        deferrals = headers.get("x-deferrals", 0)
        counts = int | float | str | bytes | bytearray | Decimal
        if not isinstance(attempt, counts) or not isinstance(deferrals, counts):
            return None  # what `int` refuses (None, a date, an array, a table)
        try:
            return cls(
                webhook_id=str(headers["x-webhook-id"]),
                endpoint_id=str(headers["x-endpoint-id"]),
                client_id=str(headers["x-client-id"]),
                job_id=str(headers["x-job-id"]),
                event_type=str(headers["x-event-type"]),
                attempt=max(1, int(attempt)),
                body=message.body,
                deferrals=max(0, int(deferrals)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def next_attempt(self) -> WebhookMessage:
        return replace(self, attempt=self.attempt + 1, deferrals=0)

    def first_attempt(self) -> WebhookMessage:
        return replace(self, attempt=1, deferrals=0)

    def deferred(self) -> WebhookMessage:
        return replace(self, deferrals=self.deferrals + 1)


def _amqp_message(webhook: WebhookMessage, expiration_ms: int | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        webhook.body,
        message_id=webhook.webhook_id,
        content_type="application/json",
        headers=webhook.headers(),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=None if expiration_ms is None else expiration_ms / 1000,
    )


def delays_ms(schedule: tuple[float, ...]) -> list[int]:
    """The delay queues' delays, in milliseconds, once each."""
    return sorted({max(1, round(step * 1000)) for step in schedule})


async def declare_webhook_topology(
    channel: AbstractChannel, topology: WebhookTopology, schedule: tuple[float, ...]
) -> tuple[AbstractExchange, AbstractQueue, AbstractQueue]:
    """Declare everything, idempotently; the exchange, the delivery queue and the dead queue."""
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await declare_work_queue(channel, topology.queue, topology.exchange, DEAD)
    await queue.bind(exchange, routing_key=DELIVER)
    dead = await declare_dead_letter_queue(channel, topology.dead_queue)
    await dead.bind(exchange, routing_key=DEAD)
    for delay in delays_ms(schedule):
        waiting = await channel.declare_queue(
            topology.delay_queue(delay),
            durable=True,
            arguments={
                "x-dead-letter-exchange": topology.exchange,
                "x-dead-letter-routing-key": DELIVER,
            },
        )
        await waiting.bind(exchange, routing_key=delay_key(delay))
    return exchange, queue, dead


class WebhookBroker:
    """One connection for webhook messages: publishing them (the notifier: new events; the
    webhook process: retries and dead letters) and consuming the delivery queue. Opened on
    first use; every failure to publish is `BrokerUnavailable`."""

    def __init__(
        self, amqp_url: str, topology: WebhookTopology, schedule: tuple[float, ...]
    ) -> None:
        self._url = amqp_url
        self.topology = topology
        self._schedule = schedule
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consuming: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._queue: AbstractQueue | None = None
        self._lock = asyncio.Lock()

    async def _ensure_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is None:
                connection = self._connection or await connect(self._url)
                self._connection = connection
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange, _, _ = await declare_webhook_topology(
                    channel, self.topology, self._schedule
                )
                self._channel = channel
            return self._exchange

    async def _publish(self, message: aio_pika.Message, routing_key: str) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                exchange = await self._ensure_exchange()
                confirmation = await exchange.publish(
                    message, routing_key=routing_key, mandatory=True
                )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"the broker did not confirm the message: {confirmation!r}")

    async def publish(self, webhook: WebhookMessage) -> None:
        """A new event, for the delivery queue."""
        await self._publish(_amqp_message(webhook), DELIVER)

    async def retry_later(self, webhook: WebhookMessage, step_seconds: float, wait_ms: int) -> None:
        """`webhook` into the delay queue of its step, to come back after `wait_ms`."""
        delay = max(1, round(step_seconds * 1000))
        await self._publish(_amqp_message(webhook, max(1, wait_ms)), delay_key(delay))

    async def set_aside(self, webhook: WebhookMessage) -> None:
        """`webhook` into the webhooks' dead-letter queue."""
        await self._publish(_amqp_message(webhook), DEAD)

    async def consume(
        self,
        on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
        prefetch: int,
    ) -> None:
        """Consume the delivery queue on a channel of its own, `prefetch` messages at once."""
        await self._ensure_exchange()
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._queue = await channel.declare_queue(self.topology.queue, passive=True)
        self._consuming = channel
        self._consumer_tag = await self._queue.consume(on_message)

    async def cancel(self) -> None:
        """No new deliveries (those in progress may still be acked)."""
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except (TimeoutError, *CONNECTION_EXCEPTIONS):
                pass
            self._consumer_tag = None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._channel = None
        self._exchange = None
        self._consuming = None
        self._queue = None


class WebhookDeadLetters:
    """The webhooks' dead-letter queue, for operators: counted, replayed (each message back to
    the delivery queue as a first attempt). Each call opens a connection of its own."""

    def __init__(
        self, amqp_url: str, topology: WebhookTopology, schedule: tuple[float, ...]
    ) -> None:
        self._url = amqp_url
        self._topology = topology
        self._schedule = schedule

    async def count(self) -> int:
        try:
            connection = await aio_pika.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
            async with connection:
                channel = await connection.channel()
                _, _, dead = await declare_webhook_topology(channel, self._topology, self._schedule)
                return dead.declaration_result.message_count or 0
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc

    async def replay(self, limit: int | None = None) -> int:
        """Oldest first, at most the messages there when it starts (or `limit` webhooks). A
        message that is not a webhook's is left in the queue, for a person to look at, and
        skipped: the replay goes on past it. `BrokerUnavailable` when a copy was not
        confirmed (that dead letter stays; those before it were replayed)."""
        try:
            return await self._replay(limit)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc

    async def _replay(self, limit: int | None) -> int:
        connection = await aio_pika.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange, _, dead = await declare_webhook_topology(
                channel, self._topology, self._schedule
            )
            waiting = dead.declaration_result.message_count or 0
            todo = waiting if limit is None else min(limit, waiting)
            replayed = 0
            # Foreign messages stay unacked (so `get` moves past them) until the end, then go
            # back to the queue; at most `waiting` messages are looked at.
            skipped: list[AbstractIncomingMessage] = []
            try:
                for _ in range(waiting):
                    if replayed >= todo:
                        break
                    message = await dead.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    webhook = WebhookMessage.of(message)
                    if webhook is None:  # not ours: left there, for a person to look at
                        skipped.append(message)
                        continue
                    try:
                        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                            confirmation = await exchange.publish(
                                _amqp_message(webhook.first_attempt()),
                                routing_key=DELIVER,
                                mandatory=True,
                            )
                    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                        await _requeue(message)
                        raise BrokerUnavailable(repr(exc)) from exc
                    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                        await _requeue(message)
                        raise BrokerUnavailable(
                            f"the broker did not confirm the replayed copy: {confirmation!r}"
                        )
                    await message.ack()  # only once the broker confirmed the copy
                    replayed += 1
            finally:
                for message in skipped:
                    await _requeue(message)
            return replayed


async def _requeue(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):  # not heard of: it returns when the channel closes
        await message.nack(requeue=True)


async def delete_webhook_topology(
    amqp_url: str, topology: WebhookTopology, schedule: tuple[float, ...]
) -> None:
    """Delete the webhooks' exchange and queues (tests clean up)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        names = [topology.queue, topology.dead_queue]
        names += [topology.delay_queue(delay) for delay in delays_ms(schedule)]
        for name in names:
            await channel.queue_delete(name)
        await channel.exchange_delete(topology.exchange)

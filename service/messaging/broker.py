"""RabbitMQ: the topology both sides declare, and the publisher of submissions.

    exchange medical_events (topic, durable) --#--> queue medical_events.jobs
        (quorum, delivery limit, dead-letter exchange medical_events.dead)
    exchange medical_events.dead (fanout, durable) --> queue medical_events.dead

A message's routing key is its job type; its `message_id` is the job id; it is persistent and
carries the request id in the `x-request-id` header.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

log = structlog.get_logger("medevents.broker")

REQUEST_ID_HEADER = "x-request-id"
# "$" when the client's document is the whole of `data` as posted to the HTTP API: the paths
# of a 422 are then the client's own (`$.encounter...`), not the message's (`$.data.encounter`).
DATA_ROOT_HEADER = "x-data-root"
# Redeliveries (crashes, restarts with messages in flight) before a message is dead-lettered.
DELIVERY_LIMIT = 20
PUBLISH_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0


class BrokerUnavailable(Exception):
    """The broker could not be reached, or did not confirm a message."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of the exchanges and queues; `prefix` keeps test runs apart on one broker."""

    prefix: str = ""

    @property
    def exchange(self) -> str:
        return f"{self.prefix}medical_events"

    @property
    def queue(self) -> str:
        return f"{self.prefix}medical_events.jobs"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}medical_events.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}medical_events.dead"

    @property
    def events_exchange(self) -> str:
        """Fanout of job-finished events, for long polls (see service.job_events)."""
        return f"{self.prefix}medical_events.finished"


async def declare_topology(
    channel: AbstractChannel, topology: Topology
) -> tuple[AbstractExchange, AbstractQueue]:
    """Declare everything, idempotently; returns the submissions exchange and the jobs queue.

    Both the publisher and the consumer declare it, so a message published before any
    consumer ran is kept, never dropped as unroutable.
    """
    dead_exchange = await channel.declare_exchange(
        topology.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(
        topology.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead_exchange)
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(
        topology.queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": topology.dead_exchange,
        },
    )
    await queue.bind(exchange, routing_key="#")
    return exchange, queue


async def ready_messages(queue: AbstractQueue | None) -> int | None:
    """Messages ready in a queue as the broker counts them now; None when it cannot say."""
    if queue is None or queue.channel.is_closed:
        return None
    try:
        declared = await queue.declare(timeout=2)
    except (TimeoutError, *CONNECTION_EXCEPTIONS):
        return None
    return declared.message_count


async def delete_topology(amqp_url: str, topology: Topology) -> None:
    """Delete every exchange and queue of a topology (test runs and benchmarks clean up)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (topology.queue, topology.dead_queue):
            await channel.queue_delete(queue)
        for exchange in (topology.exchange, topology.dead_exchange, topology.events_exchange):
            await channel.exchange_delete(exchange)


def submission_message(
    body: bytes, job_id: str | None, request_id: str | None, data_root: str | None = None
) -> aio_pika.Message:
    headers: dict[str, Any] = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if data_root is not None:
        headers[DATA_ROOT_HEADER] = data_root
    return aio_pika.Message(
        body,
        message_id=job_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


async def connect(amqp_url: str) -> AbstractRobustConnection:
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        return await aio_pika.connect_robust(amqp_url, client_properties={"product": "medevents"})


class SubmissionPublisher:
    """Publishes submissions with publisher confirms; every failure is `BrokerUnavailable`.

    The connection is opened on first use and re-opened by aio-pika's robust connection
    after a broker restart, so the API starts, and answers 503, while the broker is down.
    """

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self._url = amqp_url
        self._topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._lock = asyncio.Lock()

    async def _ensure_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is None:
                connection = await connect(self._url)
                try:
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._exchange, self._queue = await declare_topology(channel, self._topology)
                except BaseException:
                    await connection.close()
                    raise
                self._connection = connection
            return self._exchange

    async def connect(self) -> None:
        try:
            await self._ensure_exchange()
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise BrokerUnavailable(repr(exc)) from exc

    async def publish(
        self,
        submission: dict[str, Any],
        job_id: str,
        request_id: str | None,
        *,
        data_root: str | None = None,
    ) -> None:
        body = orjson.dumps(submission)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                exchange = await self._ensure_exchange()
                confirmation = await exchange.publish(
                    submission_message(body, job_id, request_id, data_root),
                    routing_key=str(submission.get("type", "unknown")),
                    mandatory=True,
                )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("broker_unavailable", error=repr(exc))
            raise BrokerUnavailable(repr(exc)) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"the broker did not confirm the message: {confirmation!r}")

    async def queue_depth(self) -> int | None:
        return await ready_messages(self._queue)

    async def ready(self) -> bool:
        """Whether a message could be published now: connected (a robust connection that is
        reconnecting is not), or connecting works."""
        if self._connection is not None and not self._connection.is_closed:
            return self._connection.connected.is_set()
        try:
            await self.connect()
        except BrokerUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._exchange = None

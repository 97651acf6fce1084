"""RabbitMQ: connecting, and the topology every side declares.

    exchange medical_events (topic, durable) --#--> queue medical_events.jobs
        (quorum, delivery limit, dead-letter exchange medical_events.dead)
    exchange medical_events.dead (fanout, durable) --> queue medical_events.dead

A submission's routing key is its job type and its `message_id` the job id (see
`messaging.headers`); the events exchange carries job-finished events (`messaging.job_events`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import ArgumentsType

# Redeliveries (crashes, restarts with messages in flight) before a message is dead-lettered.
DELIVERY_LIMIT = 20
PUBLISH_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0


class BrokerUnavailable(Exception):
    """The broker could not be reached, or did not confirm a message."""


# Every name the service gives an exchange or a queue contains this, whatever the prefix.
SERVICE_NAME_ROOT = "medical_events"


@dataclass(frozen=True, slots=True)
class ServiceNames:
    """The rule of every exchange's and queue's name: `prefix` (which keeps test runs apart on
    one broker), `SERVICE_NAME_ROOT`, then what it names, dotted."""

    prefix: str = ""

    def name(self, *parts: str) -> str:
        return ".".join((f"{self.prefix}{SERVICE_NAME_ROOT}", *parts))


@dataclass(frozen=True, slots=True)
class Topology(ServiceNames):
    """Names of the exchanges and queues of jobs."""

    @property
    def exchange(self) -> str:
        return self.name()

    @property
    def queue(self) -> str:
        return self.name("jobs")

    @property
    def dead_exchange(self) -> str:
        return self.name("dead")

    @property
    def dead_queue(self) -> str:
        return self.name("dead")

    @property
    def events_exchange(self) -> str:
        """Fanout of job-finished events, for long polls (see `messaging.job_events`)."""
        return self.name("finished")


DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def may_reply_to(queue: str) -> bool:
    """Whether a reply may go to `queue`: RabbitMQ's direct reply-to (its pseudo-queue, as a
    producer sets it, or the name the broker rewrites it to) or a queue of the producer's
    own, never one of a medical events service (this instance's or another's): a reply there
    would become a job or a dead letter."""
    if queue == DIRECT_REPLY_TO or queue.startswith(f"{DIRECT_REPLY_TO}."):
        return True
    return bool(queue) and SERVICE_NAME_ROOT not in queue


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
    dead_queue = await declare_dead_letter_queue(channel, topology.dead_queue)
    await dead_queue.bind(dead_exchange)
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await declare_work_queue(channel, topology.queue, topology.dead_exchange)
    await queue.bind(exchange, routing_key="#")
    return exchange, queue


async def declare_work_queue(
    channel: AbstractChannel,
    name: str,
    dead_letter_exchange: str,
    dead_letter_routing_key: str | None = None,
) -> AbstractQueue:
    """A queue consumed with acks (durable, quorum): a message redelivered past
    `DELIVERY_LIMIT` is dead-lettered to `dead_letter_exchange` (with its own routing key, or
    `dead_letter_routing_key`)."""
    arguments: ArgumentsType = {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_letter_exchange,
    }
    if dead_letter_routing_key is not None:
        arguments["x-dead-letter-routing-key"] = dead_letter_routing_key
    return await channel.declare_queue(name, durable=True, arguments=arguments)


async def declare_dead_letter_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """Where dead letters stay until an operator replays them (durable, quorum)."""
    return await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


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


async def connect(amqp_url: str) -> AbstractRobustConnection:
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        return await aio_pika.connect_robust(amqp_url, client_properties={"product": "medevents"})

"""The publisher of submissions, for the HTTP API and `medevents publish`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractExchange, AbstractQueue, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from service.messaging.broker import (
    PUBLISH_TIMEOUT_SECONDS,
    BrokerUnavailable,
    Topology,
    connect,
    declare_topology,
    ready_messages,
)
from service.messaging.headers import submission_message
from service.messaging.loop_thread import LoopStopped, LoopThread

log = structlog.get_logger("medevents.broker")

T = TypeVar("T")


class SubmissionPublisher:
    """Publishes submissions with publisher confirms; every failure is `BrokerUnavailable`.

    The connection is opened on first use and re-opened by aio-pika's robust connection
    after a broker restart, so the API starts, and answers 503, while the broker is down.

    The connection lives on an event loop of its own (`LoopThread`): a publish and its
    confirm do not wait behind the caller's loop, however busy polls keep it, and
    `PUBLISH_TIMEOUT_SECONDS` measures the broker, not the caller's queue of work.
    """

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self._url = amqp_url
        self._topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._lock = asyncio.Lock()  # used on the publisher's loop only
        self._io = LoopThread("medevents-publisher")
        self._closed = False

    async def _on_io_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """`coroutine` on the publisher's loop; `BrokerUnavailable` once closed."""
        if self._closed:
            coroutine.close()
            raise BrokerUnavailable("the publisher is closed")
        try:
            return await self._io.run(coroutine)
        except LoopStopped as exc:  # closed while it ran
            raise BrokerUnavailable(str(exc)) from None

    async def _ensure_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._closed:
                raise BrokerUnavailable("the publisher is closed")
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
        await self._on_io_loop(self._connect())

    async def _connect(self) -> None:
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
        routing_key = str(submission.get("type", "unknown"))
        await self._on_io_loop(self._publish(body, routing_key, job_id, request_id, data_root))

    async def _publish(
        self,
        body: bytes,
        routing_key: str,
        job_id: str,
        request_id: str | None,
        data_root: str | None,
    ) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                exchange = await self._ensure_exchange()
                confirmation = await exchange.publish(
                    submission_message(body, job_id, request_id, data_root),
                    routing_key=routing_key,
                    mandatory=True,
                )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("broker_unavailable", error=repr(exc))
            raise BrokerUnavailable(repr(exc)) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"the broker did not confirm the message: {confirmation!r}")

    async def queue_depth(self) -> int | None:
        queue = self._queue
        if queue is None or self._closed:
            return None
        try:
            return await self._on_io_loop(ready_messages(queue))
        except BrokerUnavailable:
            return None

    async def ready(self) -> bool:
        """Whether a message could be published now: connected (a robust connection that is
        reconnecting is not), or connecting works."""
        connection = self._connection  # set and cleared on the publisher's thread
        if connection is not None and not connection.is_closed:
            return connection.connected.is_set()
        try:
            await self.connect()
        except BrokerUnavailable:
            return False
        return True

    async def close(self) -> None:
        """Close the connection and stop the publisher's thread; later calls answer
        `BrokerUnavailable` (a publish in flight too)."""
        try:
            if self._io.running and not self._closed:
                await self._io.run(self._close())
        finally:
            self._closed = True
            await self._io.stop()

    async def _close(self) -> None:
        async with self._lock:  # after a connect under way, before any other
            self._closed = True
            connection, self._connection = self._connection, None
            self._exchange = self._queue = None
            if connection is not None:
                await connection.close()

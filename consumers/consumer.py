"""The RabbitMQ consumer: a thin entrypoint over `SubmissionProcessor`.

- Up to `CONSUMER_PREFETCH` messages are processed at once (aio-pika runs each delivery in
  its own task); a message is acked only after its job's final state is written.
- MongoDB unavailable: the message is held, unacked, and retried with exponential backoff
  until the database answers; nothing is marked failed, nothing is lost, no hot loop.
- A message with no usable job id is rejected without requeue, so the broker dead-letters it
  into `medical_events.dead`; it is logged first.
- `stop()`: no new messages, the ones in flight finish (or go back to the queue when they
  cannot), then the connection closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time

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

from consumers.processing import (
    Delivery,
    JobIdTaken,
    ParsedBody,
    SubmissionProcessor,
    parse_body,
)
from service.broker import REQUEST_ID_HEADER, Topology, connect, declare_topology
from service.jobs import is_valid_job_id, job_href
from service.middlewares import SANE_REQUEST_ID
from service.store import StoreUnavailable

log = structlog.get_logger("medevents.consumer")

OUTAGE_BACKOFF_START = 0.5
OUTAGE_BACKOFF_MAX = 30.0
CONNECT_BACKOFF_MAX = 30.0
STOP_TIMEOUT_SECONDS = 30.0
CANCEL_TIMEOUT_SECONDS = 5.0


def job_id_of(message: AbstractIncomingMessage, parsed: ParsedBody) -> str | None:
    """The job id of a message: its `message_id` when that is a valid job id.

    Without a `message_id`, a body that is a JSON object gets an id derived from it and the
    producer's `timestamp` and `correlation_id`, so that a redelivery maps to the same job; a
    producer that wants to poll at once sets `message_id` itself. None when there is no
    usable id: a bad `message_id`, or none and a body that is no submission at all.
    """
    if message.message_id is not None:
        return message.message_id if is_valid_job_id(message.message_id) else None
    if parsed.raw is None:
        return None
    digest = hashlib.sha256(message.body)
    digest.update(repr((message.timestamp, message.correlation_id)).encode())
    return base64.urlsafe_b64encode(digest.digest()).decode()[:22]


def request_id_of(message: AbstractIncomingMessage, job_id: str) -> str:
    value = (message.headers or {}).get(REQUEST_ID_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and SANE_REQUEST_ID.fullmatch(value) else job_id


class JobConsumer:
    def __init__(
        self,
        amqp_url: str,
        processor: SubmissionProcessor,
        *,
        prefetch: int,
        topology: Topology | None = None,
    ) -> None:
        self._url = amqp_url
        self._processor = processor
        self._prefetch = prefetch
        self._topology = topology or Topology()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Connect (waiting for the broker if it is down), declare, and start consuming."""
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
        await channel.set_qos(prefetch_count=self._prefetch)
        _, self._queue = await declare_topology(channel, self._topology)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consumer_started", queue=self._queue.name, prefetch=self._prefetch)

    async def stop(self, drain_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._queue is not None and self._consumer_tag is not None:
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                    await self._queue.cancel(self._consumer_tag)
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                log.warning("consumer_cancel_failed", error=repr(exc))
        if self._in_flight:
            log.info("consumer_draining", in_flight=len(self._in_flight))
            _, pending = await asyncio.wait(self._in_flight, timeout=drain_seconds)
            for task in pending:  # their messages go back to the queue when the channel closes
                task.cancel()
        if self._connection is not None:
            await self._connection.close()
        log.info("consumer_stopped")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await message.nack(requeue=True)
            return
        parsed = parse_body(message.body)
        job_id = job_id_of(message, parsed)
        if job_id is None:
            log.error(
                "message_dead_lettered",
                reason="no usable job id",
                message_id=(message.message_id or "")[:100],
                body_bytes=len(message.body),
            )
            await message.reject(requeue=False)
            return
        request_id = request_id_of(message, job_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id, job_id=job_id):
            started = time.perf_counter()
            delivery = Delivery(job_id, message.body, request_id)
            try:
                job = await self._process_until_stored(delivery, parsed, message)
            except JobIdTaken:
                log.error("message_dead_lettered", reason="job id taken by another submission")
                await message.reject(requeue=False)
                return
            except Exception:
                # A bug of ours, not of the job: back to the queue after a pause; the
                # broker's delivery limit dead-letters a message that always fails.
                log.exception("message_failed")
                await asyncio.sleep(OUTAGE_BACKOFF_START)
                await message.nack(requeue=True)
                return
            if job is None:
                return
            await message.ack()
            log.debug("message_acked", duration_ms=round((time.perf_counter() - started) * 1000, 2))

    async def _process_until_stored(
        self, delivery: Delivery, parsed: ParsedBody, message: AbstractIncomingMessage
    ) -> dict | None:
        """The finished job; None when the consumer stopped first and the message went back."""
        delay = OUTAGE_BACKOFF_START
        replied = False
        while True:
            try:
                job = await self._processor.accept(delivery, parsed)
                if message.reply_to and not replied:
                    await self._reply(message, delivery.job_id)
                    replied = True
                return await self._processor.complete(job, parsed)
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    await message.nack(requeue=True)
                    return None
                log.warning("mongodb_unavailable", error=str(exc)[:200], retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # a pause that a stop cuts short
                        await self._stopping.wait()
                delay = min(delay * 2, OUTAGE_BACKOFF_MAX)

    async def _reply(self, message: AbstractIncomingMessage, job_id: str) -> None:
        """Tell a producer that set `reply_to` which job its message became."""
        assert self._channel is not None
        reply = aio_pika.Message(
            orjson.dumps({"job_id": job_id, "href": job_href(job_id)}),
            correlation_id=message.correlation_id,
            content_type="application/json",
        )
        try:
            await self._channel.default_exchange.publish(reply, routing_key=message.reply_to or "")
        except CONNECTION_EXCEPTIONS as exc:
            log.warning("reply_failed", error=repr(exc))

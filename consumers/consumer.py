"""The RabbitMQ consumer: a thin entrypoint over `SubmissionProcessor`.

- Up to `CONSUMER_PREFETCH` messages are processed at once (aio-pika runs each delivery in
  its own task); a message is acked only after its job's final state is written.
- MongoDB unavailable: the message is held, unacked, and retried with exponential backoff
  until the database answers; nothing is marked failed, nothing is lost, no hot loop.
- A message with no usable job id is rejected without requeue, so the broker dead-letters it
  into `medical_events.dead`; it is logged first.
- `stop()`: no new messages, the ones in flight finish (or go back to the queue when they
  cannot), then the connection closes.
- Acks, nacks and rejects that cannot reach the broker any more are only logged: the broker
  delivers the message again, and processing is repeatable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import time
import uuid

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

from service.api.middlewares import SANE_REQUEST_ID
from service.domain.eta import DEFAULT_MEAN_SECONDS, ConsumerStats, MovingAverage
from service.domain.jobs import is_valid_job_id, job_href
from service.messaging.broker import (
    DATA_ROOT_HEADER,
    DELIVERY_LIMIT,
    REQUEST_ID_HEADER,
    Topology,
    connect,
    declare_topology,
    ready_messages,
)
from service.messaging.job_events import FinishedEvents, declare_events_exchange
from service.observability.metrics import DEAD_LETTERED, REDELIVERIES
from service.storage.jobs import StoreUnavailable
from service.usecases.processing import (
    Delivery,
    JobIdTaken,
    ParsedBody,
    SubmissionProcessor,
    parse_body,
)

log = structlog.get_logger("medevents.consumer")

OUTAGE_BACKOFF_START = 0.5
OUTAGE_BACKOFF_MAX = 30.0
CONNECT_BACKOFF_MAX = 30.0
STOP_TIMEOUT_SECONDS = 30.0
REPORT_EVERY_SECONDS = 5.0
# At this delivery a message failing for a reason of ours ends its job with 500 instead of
# going back once more to be dead-lettered by the broker's delivery limit.
LAST_DELIVERY = DELIVERY_LIMIT - 1
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


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered the message before (quorum queues count)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


def data_root_of(message: AbstractIncomingMessage) -> list[str]:
    """Where the client's own document sits in the body, for the paths of a 422: `$.data`
    for a producer's message, `$` for a submission the HTTP API wrapped."""
    return [] if (message.headers or {}).get(DATA_ROOT_HEADER) in ("$", b"$") else ["data"]


def channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        channel = message.channel  # raises once the channel is closed
    except CONNECTION_EXCEPTIONS:
        return True
    return channel is None or channel.is_closed


async def settle(message: AbstractIncomingMessage, how: str) -> None:
    """Ack, nack (requeue) or reject (dead-letter) a message. When the channel it came on is
    gone, nothing can be settled: the broker delivers it again, and processing is
    repeatable, so that is only logged."""
    if how == "reject":
        DEAD_LETTERED.inc()
    try:
        if how == "ack":
            await message.ack()
        elif how == "nack":
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except CONNECTION_EXCEPTIONS as exc:
        log.warning("message_not_settled", how=how, error=repr(exc))


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
        stats: ConsumerStats | None = None,
    ) -> None:
        self._url = amqp_url
        self._processor = processor
        self._prefetch = prefetch
        self._topology = topology or Topology()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._events: FinishedEvents | None = None
        self._consumer_tag: str | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        # Recent processing time, reported for the ETA of new jobs (service.eta).
        self._stats = stats
        self._id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mean = MovingAverage()
        processor.on_finished = self._mean.add
        self._reporting: asyncio.Task | None = None

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
        self._events = FinishedEvents(await declare_events_exchange(channel, self._topology))
        self._consumer_tag = await self._queue.consume(self._on_message)
        if self._stats is not None:
            self._reporting = asyncio.create_task(self._report_load())
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
            if pending:
                # Not cancelled: a task cancelled inside a driver call can leave the driver's
                # locks held. Their messages go back to the queue when the channel closes, and
                # the tasks end at their next step, seeing the channel closed.
                log.warning("consumer_stopped_with_messages_in_flight", in_flight=len(pending))
        if self._reporting is not None:
            await self._reporting  # ends between reports, never inside one
        if self._processor.outcomes is not None:  # the drained jobs' counts too
            with contextlib.suppress(StoreUnavailable):
                await self._processor.outcomes.flush()
        if self._events is not None:
            await self._events.close()
        if self._connection is not None:
            await self._connection.close()
        log.info("consumer_stopped")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """aio-pika's task for a delivery. The work runs in a task of our own, shielded:
        aiormq cancels its delivery tasks when the channel closes, and a cancellation that
        lands inside a driver call can leave the driver's locks held for good."""
        task = asyncio.create_task(self._handle(message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        await asyncio.shield(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await settle(message, "nack")
            return
        if message.redelivered:
            REDELIVERIES.inc()
        parsed = parse_body(message.body)
        job_id = job_id_of(message, parsed)
        if job_id is None:
            log.error(
                "message_dead_lettered",
                reason="no usable job id",
                message_id=(message.message_id or "")[:100],
                body_bytes=len(message.body),
            )
            await settle(message, "reject")
            return
        request_id = request_id_of(message, job_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id, job_id=job_id):
            started = time.perf_counter()
            delivery = Delivery(job_id, message.body, request_id, data_root_of(message))
            try:
                job = await self._process_until_stored(delivery, parsed, message)
            except JobIdTaken:
                log.error("message_dead_lettered", reason="job id taken by another submission")
                await settle(message, "reject")
                return
            except Exception:
                await self._after_unexpected_failure(message, job_id)
                return
            if job is None:
                return
            if self._events is not None:  # wake the long polls waiting for it
                self._events.add(job_id)
            await settle(message, "ack")
            elapsed = time.perf_counter() - started
            log.debug("message_acked", duration_ms=round(elapsed * 1000, 2))

    async def _after_unexpected_failure(
        self, message: AbstractIncomingMessage, job_id: str
    ) -> None:
        """A bug of ours outside the job's own bounded retries. The message goes back to the
        queue after a pause, until its last delivery: then the job ends failed_with_error
        (500, what it wrote removed), so that no job waits for a message that is gone."""
        log.exception("message_failed", delivery_count=delivery_count(message))
        if delivery_count(message) < LAST_DELIVERY:
            await asyncio.sleep(OUTAGE_BACKOFF_START)
            await settle(message, "nack")
            return
        try:
            await self._processor.give_up(job_id)
        except Exception:
            log.exception("message_dead_lettered", reason="failed at its last delivery")
            await settle(message, "reject")
            return
        if self._events is not None:
            self._events.add(job_id)
        await settle(message, "ack")

    async def _process_until_stored(
        self, delivery: Delivery, parsed: ParsedBody, message: AbstractIncomingMessage
    ) -> dict | None:
        """The finished job; None when the message went back to the queue (the consumer
        stops, or the channel it came on closed: the broker delivers it again)."""
        delay = OUTAGE_BACKOFF_START
        replied = False
        while True:
            try:
                job = await self._processor.accept(delivery, parsed)
                if message.reply_to and not replied:
                    await self._reply(message, delivery.job_id)
                    replied = True
                return await self._processor.complete(job, parsed, delivery.data_root)
            except StoreUnavailable as exc:
                if self._stopping.is_set() or channel_closed(message):
                    await settle(message, "nack")
                    return None
                log.warning("mongodb_unavailable", error=str(exc)[:200], retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # a pause that a stop cuts short
                        await self._stopping.wait()
                delay = min(delay * 2, OUTAGE_BACKOFF_MAX)

    async def _report_load(self) -> None:
        assert self._stats is not None
        while not self._stopping.is_set():
            try:
                await self._stats.report(
                    self._id, self._mean.value or DEFAULT_MEAN_SECONDS, self._prefetch
                )
                if self._processor.outcomes is not None:
                    await self._processor.outcomes.flush()
            except StoreUnavailable:
                pass
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_EVERY_SECONDS):
                    await self._stopping.wait()
        with contextlib.suppress(StoreUnavailable):
            await self._stats.forget(self._id)

    async def queue_depth(self) -> int | None:
        return await ready_messages(self._queue)

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

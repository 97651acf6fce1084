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
import time

import structlog
from aio_pika.abc import AbstractIncomingMessage

from service.domain.jobs import job_href, job_id_of_message
from service.messaging.broker import DELIVERY_LIMIT
from service.messaging.headers import data_root_in, delivery_count, request_id_in
from service.messaging.job_queue import JobQueue, channel_closed, handle_shielded
from service.observability.metrics import DEAD_LETTERED, REDELIVERIES
from service.storage.mongo import StoreUnavailable
from service.usecases.load_reports import LoadReporter
from service.usecases.processing import Delivery, JobIdTaken, SubmissionProcessor
from service.usecases.reconciler import JobReconciler
from service.usecases.running import pause
from service.usecases.submissions import ParsedBody, parse_body_off_loop
from service.usecases.webhooks import WebhookNotifier

log = structlog.get_logger("medevents.consumer")

OUTAGE_BACKOFF_START = 0.5
OUTAGE_BACKOFF_MAX = 30.0
STOP_TIMEOUT_SECONDS = 30.0
# At this delivery a message failing for a reason of ours ends its job with 500 instead of
# going back once more to be dead-lettered by the broker's delivery limit.
LAST_DELIVERY = DELIVERY_LIMIT - 1


class JobConsumer:
    def __init__(
        self,
        queue: JobQueue,
        processor: SubmissionProcessor,
        reporter: LoadReporter | None = None,
        *,
        reconciler: JobReconciler | None = None,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        """`reporter`: reports this consumer's load (for the ETA of new jobs) and the jobs it
        finished (for the dashboard) every few seconds; None: reports nothing. `reconciler`:
        ends the job of a message this consumer dead-letters at its last delivery, so that its
        client sees at once that it will not finish by itself; None: the reconciler's next run
        does."""
        self._queue = queue
        self._processor = processor
        self._reporter = reporter
        self._reconciler = reconciler
        # Told of each job that ended, before its message is acked (the clients' webhooks).
        self._notifier = notifier
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._reporting: asyncio.Task | None = None

    async def _settle(self, message: AbstractIncomingMessage, how: str) -> None:
        if how == "reject":
            DEAD_LETTERED.inc()
        await self._queue.settle(message, how)

    async def start(self) -> None:
        """Connect (waiting for the broker if it is down), declare, and start consuming."""
        await self._queue.consume(self._on_message)
        if self._reporter is not None:
            self._reporting = asyncio.create_task(self._reporter.run(self._stopping))
        log.info("consumer_started", queue=self._queue.name, prefetch=self._queue.prefetch)

    async def stop(self, drain_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self._queue.cancel()
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
        if self._reporter is not None:  # the drained jobs' counts too
            await self._reporter.flush_outcomes()
        await self._queue.close()
        log.info("consumer_stopped")

    async def queue_depth(self) -> int | None:
        return await self._queue.depth()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await handle_shielded(self._in_flight, self._handle(message))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await self._settle(message, "nack")
            return
        if message.redelivered:
            REDELIVERIES.inc()
        parsed = await parse_body_off_loop(message.body)
        job_id = job_id_of_message(
            message.message_id,
            message.body,
            message.timestamp,
            message.correlation_id,
            body_is_object=parsed.raw is not None,
        )
        if job_id is None:
            log.error(
                "message_dead_lettered",
                reason="no usable job id",
                message_id=(message.message_id or "")[:100],
                body_bytes=len(message.body),
            )
            await self._settle(message, "reject")
            return
        request_id = request_id_in(message.headers) or job_id
        with structlog.contextvars.bound_contextvars(request_id=request_id, job_id=job_id):
            started = time.perf_counter()
            delivery = Delivery(job_id, message.body, request_id, data_root_in(message.headers))
            try:
                job = await self._process_until_stored(delivery, parsed, message)
            except JobIdTaken:
                log.error("message_dead_lettered", reason="job id taken by another submission")
                await self._settle(message, "reject")
                return
            except Exception:
                await self._after_unexpected_failure(message, job_id)
                return
            if job is None:
                return
            if not await self._notified(job, message):
                return
            self._queue.finished(job_id)  # wake the long polls waiting for it
            await self._settle(message, "ack")
            elapsed = time.perf_counter() - started
            log.debug("message_acked", duration_ms=round(elapsed * 1000, 2))

    async def _after_unexpected_failure(
        self, message: AbstractIncomingMessage, job_id: str
    ) -> None:
        """A bug of ours outside the job's own bounded retries. The message goes back to the
        queue after a pause, until its last delivery: then the job ends failed_with_error
        (500, what it wrote removed), so that no job waits for a message that is gone."""
        deliveries = delivery_count(message.headers)
        log.exception("message_failed", delivery_count=deliveries)
        if deliveries < LAST_DELIVERY:
            await asyncio.sleep(OUTAGE_BACKOFF_START)
            await self._settle(message, "nack")
            return
        try:
            await self._processor.give_up(job_id)
        except Exception:
            log.exception("message_dead_lettered", reason="failed at its last delivery")
            await self._settle(message, "reject")
            if self._reconciler is not None:
                try:  # it wakes the long polls; MongoDB down: the deadline rule ends it later
                    await self._reconciler.set_aside(job_id)
                except Exception:
                    log.exception("job_not_set_aside")
            return
        try:
            job = await self._processor.jobs.get(job_id) if self._notifier is not None else None
        except StoreUnavailable:
            job = None  # the redelivery finds the job ended, and notifies
        if job is None and self._notifier is not None:
            await self._settle(message, "nack")
            return
        if job is not None and not await self._notified(job, message):
            return
        self._queue.finished(job_id)
        await self._settle(message, "ack")

    async def _notified(self, job: dict, message: AbstractIncomingMessage) -> bool:
        """Whether the webhooks of the ended `job` are published (or none is to be). When
        they could not be, the message goes back to the queue after a pause: its redelivery
        finds the job ended and publishes them again (at least once; receivers deduplicate
        by `webhook-id`)."""
        if self._notifier is None or job.get("notified"):
            return True  # none to publish, or published by whoever ended it (a cancel)
        try:
            await self._notifier.job_ended(job)
            return True
        except Exception as exc:
            log.warning("job_webhooks_not_published", error=repr(exc)[:200])
        await pause(self._stopping, OUTAGE_BACKOFF_START)
        await self._settle(message, "nack")
        return False

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
                    await self._queue.reply(message, delivery.job_id, job_href(delivery.job_id))
                    replied = True
                return await self._processor.complete(job, parsed, delivery.data_root)
            except StoreUnavailable as exc:
                if self._stopping.is_set() or channel_closed(message):
                    await self._settle(message, "nack")
                    return None
                log.warning("mongodb_unavailable", error=str(exc)[:200], retry_in_s=delay)
                await pause(self._stopping, delay)
                delay = min(delay * 2, OUTAGE_BACKOFF_MAX)

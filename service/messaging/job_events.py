"""Job-finished events: how a long-polling request learns that its job left pending without
asking MongoDB in a loop.

The consumer publishes `{"job_ids": [...]}` to the fanout exchange `medical_events.finished`
after the jobs' terminal states are written: the ids of the jobs it finished within a few
milliseconds, in one message (`{"job_id"}`, one job, is read too). Each API process
subscribes with a queue of its own (exclusive, deleted with its connection) and wakes the
requests waiting for those jobs. Events are a hint, never the truth: a woken request reads the
job from MongoDB, and a request whose event is lost (the broker was down) answers when its wait
runs out, with the job as it is then.

Listeners (`JobEvents.listen`, the API's pending-poll memory) hear the same finishes, and
whether events are being received: `events_interrupted` when the subscription's channel or
connection closes, `events_resumed` once it is subscribed again (aio-pika has then declared
the queue anew and consumes from it; an event published in between was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from service.messaging.broker import Topology, connect

log = structlog.get_logger("medevents.job_events")


async def declare_events_exchange(
    channel: AbstractChannel, topology: Topology
) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def publish_jobs_finished(
    exchange: aio_pika.abc.AbstractExchange, job_ids: list[str]
) -> None:
    """Best effort: a lost event only makes a waiting request answer at the end of its wait."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await exchange.publish(
                aio_pika.Message(
                    orjson.dumps({"job_ids": job_ids}), content_type="application/json"
                ),
                routing_key="",
            )
    except Exception as exc:  # a closed channel, a dropped connection: a hint is lost
        log.warning("job_event_not_published", jobs=len(job_ids), error=repr(exc))


# A blocked broker (a resource alarm) must not hold a consumer's stop.
PUBLISH_TIMEOUT_SECONDS = 2.0


class FinishedEvents:
    """The consumer's side: the jobs finished within `WINDOW_SECONDS` of each other go out as
    one event. Under load that is one message for many jobs (a message per job, awaited
    before each ack, cost about a fifth of the consumer's throughput); a waiting long poll
    hears of its job that much later."""

    WINDOW_SECONDS = 0.005
    MAX_IDS = 500

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self._exchange = exchange
        self._ids: list[str] = []
        self._sending: asyncio.Task | None = None
        self._closed = False

    def add(self, job_id: str) -> None:
        if self._closed:  # a job still running after the stop's drain: its event is lost
            return
        self._ids.append(job_id)
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._ids:
                if len(self._ids) < self.MAX_IDS:
                    await asyncio.sleep(self.WINDOW_SECONDS)
                batch, self._ids = self._ids[: self.MAX_IDS], self._ids[self.MAX_IDS :]
                await publish_jobs_finished(self._exchange, batch)
        finally:  # whatever happened, the next finished job starts a new batch
            self._sending = None

    async def close(self) -> None:
        """Send what is waiting (before the channel closes); bounded by the publish timeout."""
        self._closed = True
        if self._sending is not None:
            await self._sending


class FinishListener(Protocol):
    """Told what `JobEvents` hears (called in the event loop, synchronously)."""

    def jobs_finished(self, job_ids: Iterable[str]) -> None: ...

    def events_interrupted(self) -> None: ...

    def events_resumed(self) -> None: ...


class JobEvents:
    """The API's subscription, and the requests waiting on it."""

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self._url = amqp_url
        self._topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._retrying: asyncio.Task | None = None
        # Where `announce` publishes: the events exchange, on the subscription's channel.
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._listeners: list[FinishListener] = []

    def listen(self, listener: FinishListener) -> None:
        """`listener` hears every job id this process hears finished (events, and its own
        `announce`), and when events may have been lost (`events_interrupted`) and are
        received again (`events_resumed`, also at the first subscription)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Subscribe now if the broker answers, else keep trying in the background (long
        polls answer at the end of their wait meanwhile). Once subscribed, aio-pika's robust
        connection re-subscribes by itself after a broker restart."""
        if not await self._subscribe():
            self._retrying = asyncio.create_task(self._subscribe_eventually())

    async def _subscribe(self) -> bool:
        try:
            connection = await connect(self._url)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("job_events_unavailable", error=repr(exc))
            return False
        try:
            channel = await connection.channel()
            exchange = await declare_events_exchange(channel, self._topology)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            await queue.consume(self._on_event, no_ack=True)
            self._exchange = exchange
            # aio-pika restores the channel (queue, binding, consumer) after a broker restart
            # or a dropped connection; what was published in between is lost.
            channel.close_callbacks.add(self._interrupted)
            connection.close_callbacks.add(self._interrupted)
            channel.reopen_callbacks.add(self._resumed)
            connection.reconnect_callbacks.add(self._resumed)
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("job_events_unavailable", error=repr(exc))
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await connection.close()
            return False
        self._connection = connection
        self._resumed()
        return True

    async def _subscribe_eventually(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            if await self._subscribe():
                log.info("job_events_subscribed")
                return
            delay = min(delay * 2, 30.0)

    @property
    def subscribed(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    def _interrupted(self, *_: Any) -> None:
        for listener in self._listeners:
            listener.events_interrupted()

    def _resumed(self, *_: Any) -> None:
        for listener in self._listeners:
            listener.events_resumed()

    async def close(self) -> None:
        self._interrupted()
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await self._connection.close()
        self._connection = None
        self._exchange = None

    async def announce(self, job_id: str) -> None:
        """A job this API process ended itself (its client cancelled it): the requests waiting
        for it here are woken at once, and the event is published to every API process, as
        the consumer publishes its own (`publish_jobs_finished`, best effort: while this
        process is not subscribed, the others answer at the end of their wait). Our own
        subscription hears it too, and wakes no one twice: a woken request is gone."""
        self._wake([job_id])
        if self._exchange is not None and self.subscribed:
            await publish_jobs_finished(self._exchange, [job_id])

    @contextlib.contextmanager
    def waiting_for(self, job_id: str):  # noqa: ANN201 - a context manager of an Event
        """An event set when `job_id` finishes. Register before the last read of the job,
        so that a job finishing between that read and the wait is not missed."""
        finished = asyncio.Event()
        self._waiters[job_id].add(finished)
        try:
            yield finished
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(finished)
                if not waiters:
                    del self._waiters[job_id]

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
            job_ids = event["job_ids"] if "job_ids" in event else [event["job_id"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        self._wake(job_ids if isinstance(job_ids, list) else [])

    def _wake(self, job_ids: list[object]) -> None:
        if self._listeners:
            ended = [job_id for job_id in job_ids if isinstance(job_id, str)]
            for listener in self._listeners:
                listener.jobs_finished(ended)
        for job_id in job_ids:
            for finished in self._waiters.get(job_id, ()) if isinstance(job_id, str) else ():
                finished.set()

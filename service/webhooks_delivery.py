"""The `medevents webhooks` process: it consumes the webhooks queue and delivers each message
over HTTP (`WebhookWorker`), and the HTTP adapter it sends with (`HttpSender`).

Its own process (or, in `medevents run`, its own tasks and connection beside the API and the
consumer), its own queue: a slow endpoint never delays job processing. `WEBHOOK_PREFETCH`
deliveries run at once, each bounded by `WEBHOOK_TIMEOUT_SECONDS`, at most
`WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT` of them to one endpoint, and a failed one goes to a delay
queue instead of being held: a slow or failing endpoint takes at most its cap of the slots,
for at most the timeout, and the other endpoints keep the rest. A burst for an endpoint that
answers promptly waits a moment for its slots (rather than 5 s in a delay queue); the messages
of one that hangs come back from the delay queues ever more rarely (the first step, then the
second, ...), so that they do not go round and round the first step's queue while it hangs.

The sender connects only to addresses it checked itself: aiohttp's connector asks
`VettingResolver` for a name's addresses (resolved by `BoundedResolver`, on threads of its own
and within `DNS_TIMEOUT_SECONDS`), which refuses the name when any of them is not
public (`usecases.webhooks.address_refusal`), and connects to those addresses, with the name
as the Host header and the TLS server name; an IP address in a URL is checked before the
request. No proxy from the environment, no redirect (a 3xx is a failure), at most
`MAX_RESPONSE_BYTES` of the response read. `WEBHOOK_ALLOW_INSECURE` lifts the address rules
(development and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service.bootstrap import Services
from service.domain.clock import utcnow
from service.messaging.broker import BrokerUnavailable
from service.messaging.job_queue import channel_closed, handle_shielded
from service.messaging.webhooks import WebhookMessage
from service.storage.mongo import StoreUnavailable
from service.usecases.running import pause, stop_on_signals
from service.usecases.webhooks import (
    DnsTimeout,
    SendResult,
    WebhookDeliveries,
    address_refusal,
    getaddrinfo_bounded,
)

log = structlog.get_logger("medevents.webhooks")

MAX_RESPONSE_BYTES = 4096
OUTAGE_BACKOFF_SECONDS = 1.0
OUTAGE_BACKOFF_MAX_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
RETENTION_EVERY_SECONDS = 3600.0
# How long a message may wait for a slot of an endpoint at its cap that answers promptly
# (`WebhookWorker._slot_soon`) before it is deferred.
SLOT_WAIT_SECONDS = 0.5


class _Settled(enum.Enum):
    """What `WebhookWorker._until_done` answers when the message went back to the queue (an
    enum member, so that `is _SETTLED` narrows the answer's type)."""

    SETTLED = enum.auto()


_SETTLED = _Settled.SETTLED
T = TypeVar("T")


class AddressRefused(OSError):
    """A webhook's host names an address it may not connect to."""


class BoundedResolver(AbstractResolver):
    """The system's resolver (getaddrinfo, /etc/hosts included) on the webhooks' own threads,
    each lookup bounded by `DNS_TIMEOUT_SECONDS` (`usecases.webhooks.getaddrinfo_bounded`): a
    stalled DNS server neither holds a delivery past that nor takes the event loop's shared
    executor (aiohttp's `ThreadedResolver` used it, libuv's 4 threads under uvloop)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = await getaddrinfo_bounded(host, port, family, socket.AI_ADDRCONFIG)
        except DnsTimeout as exc:
            raise OSError(f"{host}: {exc}") from None
        return [
            ResolveResult(
                hostname=host,
                host=address[0],  # a link-local IPv6 address (with a scope) is refused anyway
                port=address[1],
                family=info_family,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for info_family, _, proto, _, address in infos
            if info_family in (socket.AF_INET, socket.AF_INET6)
        ]

    async def close(self) -> None:
        pass


class VettingResolver(AbstractResolver):
    """Resolves with `BoundedResolver`, then refuses the whole name when any of its
    addresses is not public: the connector connects only to what this returns."""

    def __init__(self) -> None:
        self._resolver: AbstractResolver = BoundedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        for result in found:
            refusal = address_refusal(result["host"])
            if refusal is not None:
                raise AddressRefused(f"{host}: {refusal}")
        return found

    async def close(self) -> None:
        await self._resolver.close()


class HttpSender:
    """POSTs a webhook; one session (connection pool) for the process."""

    def __init__(self, timeout_seconds: float, *, allow_insecure: bool) -> None:
        self._timeout = timeout_seconds
        self._allow_insecure = allow_insecure
        self._session: aiohttp.ClientSession | None = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=None if self._allow_insecure else VettingResolver(),
                use_dns_cache=False,  # every new connection resolves, and checks, again
                limit=0,  # WEBHOOK_PREFETCH bounds the requests at once
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult:
        started = time.perf_counter()

        def result(**outcome: Any) -> SendResult:
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            return SendResult(duration_ms=elapsed, **outcome)

        try:
            target = URL(url)
            if target.scheme not in ("https", "http") or not target.host:
                return result(ok=False, error="invalid_url", permanent=True)
            if target.scheme == "http" and not self._allow_insecure:
                return result(ok=False, error="insecure_url", permanent=True)
        except ValueError:
            return result(ok=False, error="invalid_url", permanent=True)
        if not self._allow_insecure and _is_ip(target.host):
            if address_refusal(target.host) is not None:
                return result(ok=False, error="address_refused", permanent=True)
        try:
            async with asyncio.timeout(self._timeout + 1):
                async with self._ensure_session().post(
                    target, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.content.read(MAX_RESPONSE_BYTES)
                    status = response.status
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return result(ok=False, error="address_refused", permanent=True)
            if isinstance(exc, aiohttp.ClientConnectorDNSError):
                return result(ok=False, error="dns_error")
            if isinstance(exc, aiohttp.ClientSSLError):
                return result(ok=False, error="tls_error")
            if isinstance(exc.os_error, ConnectionRefusedError):
                return result(ok=False, error="connection_refused")
            return result(ok=False, error="connection_error")
        except TimeoutError:
            return result(ok=False, error="timeout")
        except aiohttp.ClientResponseError as exc:
            return result(ok=False, status=exc.status or None, error="bad_response")
        except (aiohttp.ClientError, OSError) as exc:
            name = type(exc).__name__
            return result(ok=False, error=f"connection_error:{name}"[:64])
        if 200 <= status < 300:
            return result(ok=True, status=status)
        if 300 <= status < 400:
            return result(ok=False, status=status, error="redirect")
        return result(ok=False, status=status, error=f"http_{status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class WebhookWorker:
    """Consumes the webhooks queue: each message one attempt (`WebhookDeliveries`), acked once
    what follows it is queued.

    At most `WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT` attempts to one endpoint at once: a message
    for an endpoint at its cap waits for one of its slots if the endpoint answers promptly
    (`_slot_soon`: at most `SLOT_WAIT_SECONDS`, at most `_most_waiting` messages), else goes,
    unsent and as the same attempt, to a delay queue (`WebhookDeliveries.defer`: the first
    step's, or for an endpoint whose attempts are old, the step of the times it was deferred;
    held until a slot frees when the schedule is empty), so that one slow client cannot take
    every one of the `WEBHOOK_PREFETCH` slots. MongoDB or the broker unavailable: the message
    is kept and its step retried in place, with a growing pause, until they answer (a
    requeue would count toward the queue's delivery limit and dead-letter it); only a bug
    puts it back in the queue (counted)."""

    def __init__(self, services: Services) -> None:
        self._services = services
        settings = services.settings
        self._broker = services.webhook_broker_for_delivery
        self._sender = HttpSender(
            settings.webhook_timeout_seconds, allow_insecure=settings.webhook_allow_insecure
        )
        self._deliveries = WebhookDeliveries(
            services.webhook_store, self._broker, self._sender, settings.webhook_retry_schedule
        )
        self._per_endpoint = settings.webhook_max_in_flight_per_endpoint
        self._sending: Counter[str] = Counter()  # endpoint id: attempts being sent
        # endpoint id: when each of them began (oldest first); messages waiting for a slot
        self._started: defaultdict[str, list[float]] = defaultdict(list)
        self._waiting: Counter[str] = Counter()
        # Messages that may wait for one prompt endpoint's slots: its cap, or a quarter of the
        # prefetch (8 of the default 32) if more; a prompt endpoint holds at most that many
        # slots more than its cap, for at most `SLOT_WAIT_SECONDS` each.
        self._most_waiting = max(self._per_endpoint, settings.webhook_prefetch // 4)
        self._slot_freed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._retention: asyncio.Task | None = None

    async def start(self) -> None:
        await self._broker.consume(self._on_message, self._services.settings.webhook_prefetch)
        self._retention = asyncio.create_task(self._sweep())
        log.info(
            "webhooks_started",
            queue=self._broker.topology.queue,
            prefetch=self._services.settings.webhook_prefetch,
            per_endpoint=self._per_endpoint,
            schedule=list(self._services.settings.webhook_retry_schedule),
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await handle_shielded(self._in_flight, self._handle(message))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await _settle(message, requeue=True)
            return
        webhook = WebhookMessage.of(message)
        if webhook is None:
            log.error("webhook_message_rejected", reason="not a webhook message")
            await _settle(message, requeue=False)  # dead-lettered by the queue
            return
        endpoint_id = webhook.endpoint_id
        started: float | None = None  # when this attempt took its slot
        if self._sending[endpoint_id] >= self._per_endpoint:
            started = await self._slot_soon(endpoint_id)
        if self._sending[endpoint_id] >= self._per_endpoint and started is None:
            stuck = not self._prompt(endpoint_id)
            deferred = await self._until_done(
                message, lambda: self._deliveries.defer(webhook, stuck=stuck)
            )
            if deferred is _SETTLED:
                return
            if deferred is not None:
                log.info(
                    "webhook_deferred",
                    endpoint_id=endpoint_id,
                    webhook_id=webhook.webhook_id,
                    # A stuck endpoint's deferrals, counted; a prompt one's start over.
                    deferrals=webhook.deferrals + 1 if stuck else 0,
                    wait_s=deferred,
                )
                await _ack(message)
                return
        if started is None:
            async with self._slot_freed:  # no delay queue (an empty schedule): wait for a slot
                await self._slot_freed.wait_for(
                    lambda: self._sending[endpoint_id] < self._per_endpoint
                )
                started = self._take_slot(endpoint_id)
        try:
            attempt = await self._until_done(message, lambda: self._deliveries.attempt(webhook))
        finally:
            async with self._slot_freed:
                self._sending[endpoint_id] -= 1
                self._started[endpoint_id].remove(started)
                if not self._sending[endpoint_id]:
                    del self._sending[endpoint_id]
                    del self._started[endpoint_id]
                self._slot_freed.notify_all()
        if attempt is _SETTLED:
            return
        if attempt is not None:
            concluded = await self._until_done(message, lambda: self._deliveries.conclude(attempt))
            if concluded is _SETTLED:
                return
        await _ack(message)

    def _take_slot(self, endpoint_id: str) -> float:
        """One of the endpoint's slots taken; when."""
        now = time.monotonic()
        self._sending[endpoint_id] += 1
        self._started[endpoint_id].append(now)
        return now

    def _prompt(self, endpoint_id: str) -> bool:
        """Whether every attempt the endpoint has in flight began less than
        `SLOT_WAIT_SECONDS` ago."""
        started = self._started.get(endpoint_id)
        return started is not None and started[0] >= time.monotonic() - SLOT_WAIT_SECONDS

    async def _slot_soon(self, endpoint_id: str) -> float | None:
        """Wait for one of the endpoint's slots, and take it (when: `_take_slot`), if it should
        free soon: the endpoint answers promptly (every attempt it has in flight began less than
        `SLOT_WAIT_SECONDS` ago), fewer than `_most_waiting` messages wait for it already, and
        one frees within `SLOT_WAIT_SECONDS`. Else None at once (or after that wait): the
        message is deferred. So a fast endpoint's burst is sent as its slots free, not sent
        to the delay queue for 5 s; a hanging or slow one holds no more slots than before
        (its attempts are old: nothing waits for it), but for its first `SLOT_WAIT_SECONDS`."""
        if self._waiting[endpoint_id] >= self._most_waiting or not self._prompt(endpoint_id):
            return None
        self._waiting[endpoint_id] += 1
        try:
            async with asyncio.timeout(SLOT_WAIT_SECONDS), self._slot_freed:
                await self._slot_freed.wait_for(
                    lambda: self._sending[endpoint_id] < self._per_endpoint
                )
                return self._take_slot(endpoint_id)
        except TimeoutError:
            return None
        finally:
            self._waiting[endpoint_id] -= 1
            if not self._waiting[endpoint_id]:
                del self._waiting[endpoint_id]

    async def _until_done(
        self, message: AbstractIncomingMessage, step: Callable[[], Awaitable[T]]
    ) -> T | Literal[_Settled.SETTLED]:
        """`step()`, again and again while MongoDB or the broker is unavailable (a pause that
        doubles, up to `OUTAGE_BACKOFF_MAX_SECONDS`), the message kept; `_SETTLED` when it went
        back to the queue instead: the worker stops, its channel closed (the broker delivers
        it again), or a bug (counted by the queue's delivery limit)."""
        delay = OUTAGE_BACKOFF_SECONDS
        while True:
            try:
                return await step()
            except (StoreUnavailable, BrokerUnavailable) as exc:
                if self._stopping.is_set() or channel_closed(message):
                    await _settle(message, requeue=True)
                    return _SETTLED
                log.warning("webhook_step_postponed", error=str(exc)[:200], retry_in_s=delay)
                await pause(self._stopping, delay)
                delay = min(delay * 2, OUTAGE_BACKOFF_MAX_SECONDS)
            except Exception:
                log.exception("webhook_attempt_failed")
                await asyncio.sleep(OUTAGE_BACKOFF_SECONDS)
                await _settle(message, requeue=True)  # the queue's delivery limit ends it
                return _SETTLED

    async def _sweep(self) -> None:
        """Removes the attempts older than WEBHOOK_DELIVERIES_TTL_DAYS, every hour."""
        keep = timedelta(days=self._services.settings.webhook_deliveries_ttl_days)
        while not self._stopping.is_set():
            try:
                removed = await self._services.webhook_store.remove_deliveries_before(
                    utcnow() - keep
                )
                if removed:
                    log.info("webhook_deliveries_removed", count=removed)
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("webhook_deliveries_sweep_failed")
            await pause(self._stopping, RETENTION_EVERY_SECONDS)

    async def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self._broker.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=STOP_TIMEOUT_SECONDS)
        if self._retention is not None:
            await self._retention
        await self._sender.close()
        await self._broker.close()
        log.info("webhooks_stopped")


async def _ack(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):  # not heard of: delivered again (at least once)
        await message.ack()


async def _settle(message: AbstractIncomingMessage, *, requeue: bool) -> None:
    with contextlib.suppress(Exception):  # the broker redelivers what it did not hear of
        await message.nack(requeue=requeue)


def build_worker(services: Services) -> WebhookWorker:
    worker = WebhookWorker(services)
    services.on_close(worker.stop)
    return worker


async def run_webhooks(services: Services, stop: asyncio.Event | None = None) -> None:
    """`medevents webhooks`: deliver until SIGTERM or SIGINT (or until `stop` is set, when
    given), then stop cleanly. `/metrics` and `/health/live` on METRICS_PORT, as for
    `medevents consumer` (service.observability.liveness)."""
    stop = stop if stop is not None else stop_on_signals()
    async with services:
        await services.serve_probes()  # first, closed last: alive while the rest is not
        await services.prepare_storage()
        worker = build_worker(services)
        starting = asyncio.create_task(_start_when_broker_answers(worker, stop))
        await stop.wait()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log.info("webhooks_stopping")


async def _start_when_broker_answers(worker: WebhookWorker, stop: asyncio.Event) -> None:
    delay = OUTAGE_BACKOFF_SECONDS
    while not stop.is_set():
        try:
            await worker.start()
            return
        except _broker_start_errors() as exc:
            log.warning("webhooks_broker_unavailable", error=repr(exc)[:200], retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _broker_start_errors() -> tuple[type[BaseException], ...]:
    """What a start meets while the broker does not answer (retried, not raised)."""
    from aio_pika.exceptions import CONNECTION_EXCEPTIONS

    return (TimeoutError, BrokerUnavailable, OSError, *CONNECTION_EXCEPTIONS)


@contextlib.asynccontextmanager
async def webhooks_in_background(services: Services) -> AsyncIterator[None]:
    """For `medevents run`, beside the API and the consumer: the webhook worker on its own
    connection, started in the background, stopped with `services`."""
    stop = asyncio.Event()
    worker = build_worker(services)
    starting = asyncio.create_task(_start_when_broker_answers(worker, stop))

    async def stop_starting() -> None:
        stop.set()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting

    services.on_close(stop_starting)
    yield

"""Signed webhooks (docs/webhooks.md): endpoints registered by clients, the events of their
jobs' ends, their delivery, signed as the Standard Webhooks specification says.

- `WebhookService`: a client's endpoints (register, list, read, delete, rotate the secret) and
  their delivery attempts, for the HTTP API.
- `WebhookNotifier.job_ended(job)`: told by whatever ends a job (the consumer before it acks
  the job's message, the reconciler, a cancel), it publishes one persistent, confirmed message
  per endpoint of the job's client subscribed to the event. Which clients have endpoints is
  read at most once every `WEBHOOK_ENDPOINT_CACHE_SECONDS` (5 s by default) per process, so a
  job of a client without endpoints costs no database read, and a new endpoint receives the
  events of jobs ending from at most that long after its creation.
- `WebhookDeliveries.deliver(message)`: one attempt of the `medevents webhooks` process: signed,
  sent through a `Sender` (the HTTP adapter, `service.webhooks_delivery`), recorded; a failure
  goes to the delay queue of its step of `WEBHOOK_RETRY_SCHEDULE`, and past the last step to
  the webhooks' dead letters.
- The address rules: only `https`, no private, loopback, link-local, multicast, reserved or
  unspecified address (`address_refusal`), checked at registration (`check_url`) and again at
  each connection (the adapter's resolver), unless `WEBHOOK_ALLOW_INSECURE`.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import hashlib
import hmac
import ipaddress
import random
import secrets as random_secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import structlog

from schemas.webhooks import WEBHOOK_EVENT, event_type_of
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus
from service.messaging.webhooks import WebhookBroker, WebhookMessage
from service.storage.mongo import StoreUnavailable
from service.storage.webhooks import MAX_ENDPOINTS_PER_CLIENT, WebhookStore

log = structlog.get_logger("medevents.webhooks")

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Jitter of each retry's delay: from 0.8 to 1.2 times its step.
JITTER = 0.2
# Rotations of one endpoint's secret that may come in between before one gives up (503).
ROTATION_TRIES = 5


# --- the address rules ---


class UrlRefused(Exception):
    """A URL an endpoint may not have; the message says why (for a 422 on `$.url`)."""


# Ranges refused besides what `ipaddress` calls non-global (it calls these global): the
# deprecated site-local fec0::/10, 6to4 2002::/16 (it embeds an IPv4 address, 2002:7f00:1::1
# is 127.0.0.1 behind a relay) and the IETF protocol assignments 192.0.0.0/24.
REFUSED_NETWORKS = (
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    (ipaddress.ip_network("2002::/16"), "6to4"),
    (ipaddress.ip_network("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
)


def address_refusal(address: str) -> str | None:
    """Why a webhook may not connect to `address` (an IP address as text); None: it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network, what in REFUSED_NETWORKS:
        if ip.version == network.version and ip in network:
            return f"{address} is a {what} address"
    for refused, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not public"),
    ):
        if refused:
            return f"{address} is a {what} address"
    return None


class DnsTimeout(OSError):
    """A name did not resolve within `DNS_TIMEOUT_SECONDS`."""


# Name resolution for webhooks (registration and delivery): the system's resolver
# (getaddrinfo, /etc/hosts included) on a pool of `DNS_THREADS` threads of its own, each lookup
# waited for at most `DNS_TIMEOUT_SECONDS`. A stalled DNS server holds at most these threads
# (a thread cannot be interrupted: it stays until getaddrinfo returns), never the event loop's
# shared executor (nor, under uvloop, libuv's pool), so it delays no other part of the process;
# a lookup queued behind stalled ones times out like them.
DNS_TIMEOUT_SECONDS = 5.0
DNS_THREADS = 8
_dns_pool: ThreadPoolExecutor | None = None


def _dns_executor() -> ThreadPoolExecutor:
    global _dns_pool
    if _dns_pool is None:
        _dns_pool = ThreadPoolExecutor(max_workers=DNS_THREADS, thread_name_prefix="webhook-dns")
    return _dns_pool


async def getaddrinfo_bounded(
    host: str, port: int, family: int = socket.AF_UNSPEC, flags: int = 0
) -> list[tuple[Any, ...]]:
    """`socket.getaddrinfo` (TCP) on the webhooks' own threads, within `DNS_TIMEOUT_SECONDS`
    (`DnsTimeout` past it)."""
    call = functools.partial(
        socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags
    )
    try:
        async with asyncio.timeout(DNS_TIMEOUT_SECONDS):
            return await asyncio.get_running_loop().run_in_executor(_dns_executor(), call)
    except TimeoutError:
        raise DnsTimeout(f"{host} did not resolve within {DNS_TIMEOUT_SECONDS:g} s") from None


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses a name resolves to (bounded: `getaddrinfo_bounded`)."""
    infos = await getaddrinfo_bounded(host, port)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def check_url(url: str, *, allow_insecure: bool, resolve: Resolve = resolve_host) -> str:
    """The URL an endpoint may have, as given; `UrlRefused` otherwise. Without
    `allow_insecure`: https only, and the host (a name: every address it resolves to now)
    public."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("is not a URL") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        raise UrlRefused("must be an https URL" if not allow_insecure else "must be an http(s) URL")
    host = parts.hostname
    if not host:
        raise UrlRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("may not carry credentials")
    if parts.fragment:
        raise UrlRefused("may not have a fragment")
    if any(ord(c) < 33 for c in url):
        raise UrlRefused("may not contain spaces or control characters")
    if allow_insecure:
        return url
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            async with asyncio.timeout(DNS_TIMEOUT_SECONDS + 0.5):  # whatever `resolve` is
                addresses = await resolve(host, port or 443)
        except (DnsTimeout, TimeoutError):
            raise UrlRefused(
                f"{host} did not resolve within {DNS_TIMEOUT_SECONDS:g} s (try again later)"
            ) from None
        except (OSError, UnicodeError):
            raise UrlRefused(f"{host} cannot be resolved") from None
    if not addresses:
        raise UrlRefused(f"{host} cannot be resolved")
    for address in addresses:
        refusal = address_refusal(address)
        if refusal is not None:
            raise UrlRefused(f"must name a public address: {refusal}")
    return url


# --- secrets and signatures ---


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature_header(secrets: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256>` per secret, space separated."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(hmac.new(secret_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def signing_secrets(endpoint: dict[str, Any], now: float) -> list[str]:
    """The secrets that sign now: the current one, and an old one within its overlap."""
    return [
        s["key"]
        for s in endpoint.get("secrets", [])
        if s.get("expires_at") is None or s["expires_at"] > now
    ]


def webhook_id_of(job_id: str, endpoint_id: str) -> str:
    """`webhook-id`: the same for every attempt at one job's event to one endpoint, so that
    a receiver can deduplicate (retries, redeliveries, replays)."""
    digest = hashlib.sha256(f"{job_id}\n{endpoint_id}".encode()).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode()


# --- registration ---


class EndpointNotFound(Exception):
    """No such endpoint for this client."""


class TooManyEndpoints(Exception):
    pass


def _epoch_to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def presented(endpoint: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    """An endpoint as the API shows it (its secret only when given: at creation, rotation)."""
    old = [s for s in endpoint.get("secrets", [])[1:] if s.get("expires_at") is not None]
    shown = {
        "_id": endpoint["_id"],
        "url": endpoint["url"],
        "events": endpoint["events"],
        "created_at": endpoint["created_at"],
    }
    if old and old[0]["expires_at"] > time.time():
        shown["previous_secret_expires_at"] = _epoch_to_datetime(old[0]["expires_at"])
    if secret is not None:
        shown["secret"] = secret
    return shown


class WebhookService:
    """A client's endpoints and their attempts. Secrets leave only in the answers of
    `create` and `rotate_secret`; they are never logged."""

    def __init__(
        self,
        store: WebhookStore,
        *,
        allow_insecure: bool,
        secret_overlap_seconds: float,
        resolve: Resolve = resolve_host,
    ) -> None:
        self.store = store
        self.allow_insecure = allow_insecure
        self.secret_overlap_seconds = secret_overlap_seconds
        self.resolve = resolve

    async def create(self, client_id: str, url: str, events: list[str]) -> dict[str, Any]:
        """The endpoint, with its secret (`UrlRefused`, `TooManyEndpoints`)."""
        await check_url(url, allow_insecure=self.allow_insecure, resolve=self.resolve)
        secret = new_secret()
        endpoint = await self.store.create_within_limit(
            {
                "_id": str(uuid.uuid4()),
                "client_id": client_id,
                "url": url,
                "events": list(dict.fromkeys(events)),
                "secrets": [{"key": secret, "expires_at": None}],
                "created_at": utcnow(),
            },
            MAX_ENDPOINTS_PER_CLIENT,
        )
        if endpoint is None:
            raise TooManyEndpoints(f"a client may register {MAX_ENDPOINTS_PER_CLIENT} endpoints")
        log.info("webhook_endpoint_created", endpoint_id=endpoint["_id"], events=endpoint["events"])
        return presented(endpoint, secret)

    async def list(self, client_id: str) -> list[dict[str, Any]]:
        return [presented(e) for e in await self.store.list_for_client(client_id)]

    async def get(self, endpoint_id: str, client_id: str) -> dict[str, Any]:
        endpoint = await self.store.get_for_client(endpoint_id, client_id)
        if endpoint is None:
            raise EndpointNotFound(endpoint_id)
        return presented(endpoint)

    async def delete(self, endpoint_id: str, client_id: str) -> None:
        if not await self.store.delete_for_client(endpoint_id, client_id):
            raise EndpointNotFound(endpoint_id)
        log.info("webhook_endpoint_deleted", endpoint_id=endpoint_id)

    async def rotate_secret(self, endpoint_id: str, client_id: str) -> dict[str, Any]:
        """A new secret, shown once; the one that signed until now keeps signing (beside it)
        for `WEBHOOK_SECRET_OVERLAP_SECONDS`; an older one stops at once."""
        for _ in range(ROTATION_TRIES):
            endpoint = await self.store.get_for_client(endpoint_id, client_id)
            if endpoint is None:
                raise EndpointNotFound(endpoint_id)
            now = time.time()
            current = endpoint["secrets"][0]["key"]
            secret = new_secret()
            kept: list[dict[str, Any]] = [{"key": secret, "expires_at": None}]
            if self.secret_overlap_seconds > 0:
                kept.append({"key": current, "expires_at": now + self.secret_overlap_seconds})
            # Only if no rotation came in between: two rotations at once are two in a row,
            # each caller's secret signing (the first one's for the overlap).
            updated = await self.store.rotate_secrets(endpoint, kept)
            if updated is not None:
                break
        else:
            raise StoreUnavailable("the secret kept changing under the rotation: try again")
        log.info("webhook_secret_rotated", endpoint_id=endpoint_id)
        return presented(updated, secret)

    async def deliveries(
        self,
        endpoint_id: str,
        client_id: str,
        before: tuple[int, str | None] | None,
        limit: int,
    ) -> tuple[builtins.list[dict[str, Any]], tuple[int, str] | None]:
        """A page of the endpoint's attempts, newest first, and the cursor of the next (the
        last attempt's `(seq, _id)`)."""
        if await self.store.get_for_client(endpoint_id, client_id) is None:
            raise EndpointNotFound(endpoint_id)
        found = await self.store.deliveries(endpoint_id, before, limit)
        more = len(found) > limit
        page = found[:limit]
        return page, ((page[-1]["seq"], page[-1]["_id"]) if more and page else None)


# --- notifying ---


class WebhookNotifier:
    """One message per matching endpoint for each job that ended (at least once: a caller
    whose call raised must call again, e.g. by leaving its job message unacked)."""

    def __init__(
        self, store: WebhookStore, broker: WebhookBroker, *, cache_seconds: float = 5.0
    ) -> None:
        self._store = store
        self._broker = broker
        self._cache_seconds = cache_seconds
        self._by_client: dict[str, list[tuple[str, frozenset[str]]]] | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def _subscriptions(self) -> dict[str, list[tuple[str, frozenset[str]]]]:
        if self._by_client is not None and time.monotonic() - self._read_at < self._cache_seconds:
            return self._by_client
        async with self._lock:
            if self._by_client is None or time.monotonic() - self._read_at >= self._cache_seconds:
                try:
                    found = await self._store.subscriptions()
                except StoreUnavailable:
                    if self._by_client is None:
                        raise
                    return self._by_client  # the last known, until MongoDB answers
                by_client: dict[str, list[tuple[str, frozenset[str]]]] = {}
                for endpoint in found:
                    by_client.setdefault(endpoint["client_id"], []).append(
                        (endpoint["_id"], frozenset(endpoint.get("events", ())))
                    )
                self._by_client, self._read_at = by_client, time.monotonic()
        return self._by_client

    async def job_ended(self, job: dict[str, Any]) -> None:
        """Publish the event of `job` (terminal) to each of its client's endpoints that
        wants it. Raises `BrokerUnavailable` or `StoreUnavailable` when it could not."""
        client_id = job.get("client_id")
        if not client_id or not JobStatus(job["status"]).is_terminal:
            return
        endpoints = (await self._subscriptions()).get(client_id)
        if not endpoints:
            return
        event_type = event_type_of(job)
        wanted = [endpoint_id for endpoint_id, events in endpoints if event_type in events]
        if not wanted:
            return
        body = orjson.dumps(
            WEBHOOK_EVENT.dump(
                {"type": event_type, "timestamp": job.get("updated_at") or utcnow(), "job": job}
            )
        )
        await asyncio.gather(
            *(
                self._broker.publish(
                    WebhookMessage(
                        webhook_id_of(job["_id"], endpoint_id),
                        endpoint_id,
                        client_id,
                        job["_id"],
                        event_type,
                        1,
                        body,
                    )
                )
                for endpoint_id in wanted
            )
        )
        log.debug("webhook_events_published", job_id=job["_id"], endpoints=len(wanted))


# --- delivering ---


@dataclass(frozen=True, slots=True)
class SendResult:
    """One attempt's outcome: `ok` for a 2xx; `error` a short kind (`timeout`,
    `connection_refused`, `redirect`, `http_500`, `address_refused`, ...); `permanent`: retrying
    cannot help (the address is refused)."""

    ok: bool
    duration_ms: float
    status: int | None = None
    error: str | None = None
    permanent: bool = False


class Sender(Protocol):
    async def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult: ...


class WebhookDeliveries:
    """One attempt per message; what follows it (a retry, a dead letter) is published with
    confirms before the message is acked, and the attempt is recorded."""

    def __init__(
        self,
        store: WebhookStore,
        broker: WebhookBroker,
        sender: Sender,
        schedule: tuple[float, ...],
    ) -> None:
        self._store = store
        self._broker = broker
        self._sender = sender
        self._schedule = schedule

    async def deliver(self, message: WebhookMessage) -> str:
        """Attempt it; the attempt's status (`delivered`, `retrying`, `failed`, `dead`), or
        `dropped` when its endpoint is gone. `StoreUnavailable`: nothing was sent, try
        later; `BrokerUnavailable`: sent, but its retry could not be queued."""
        attempt = await self.attempt(message)
        if attempt is None:
            return "dropped"
        return await self.conclude(attempt)

    async def attempt(self, message: WebhookMessage) -> Attempt | None:
        """Send it once; None when its endpoint is gone. `StoreUnavailable`: nothing was sent.
        What follows (its retry or dead letter, its record) is `conclude`'s."""
        endpoint = await self._store.get(message.endpoint_id)
        if endpoint is None or endpoint.get("client_id") != message.client_id:
            log.info("webhook_dropped", reason="endpoint deleted", endpoint_id=message.endpoint_id)
            return None
        now = time.time()
        timestamp = int(now)
        headers = {
            "content-type": "application/json",
            "user-agent": "medevents-webhooks/1",
            "webhook-id": message.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                signing_secrets(endpoint, now), message.webhook_id, timestamp, message.body
            ),
        }
        result = await self._sender.send(endpoint["url"], headers, message.body)
        if result.ok:
            status = "delivered"
        elif result.permanent:
            status = "failed"
        elif message.attempt <= len(self._schedule):
            status = "retrying"
        else:
            status = "dead"
        return Attempt(message, result, status)

    async def conclude(self, attempt: Attempt) -> str:
        """Queue what follows an attempt (its retry, or its dead letter), then record it;
        `BrokerUnavailable` when that could not be queued (call again: it is queued once
        confirmed, never sent again)."""
        message, result, status = attempt.message, attempt.result, attempt.status
        if status in ("failed", "dead"):
            await self._broker.set_aside(message)
        elif status == "retrying":
            step = self._schedule[message.attempt - 1]
            await self._broker.retry_later(message.next_attempt(), step, _jittered_ms(step))
        log.info(
            "webhook_attempt",
            endpoint_id=message.endpoint_id,
            webhook_id=message.webhook_id,
            job_id=message.job_id,
            attempt=message.attempt,
            status=status,
            response_status=result.status,
            error=result.error,
            duration_ms=result.duration_ms,
        )
        try:
            await self._store.record_attempt(
                {
                    "endpoint_id": message.endpoint_id,
                    "client_id": message.client_id,
                    "webhook_id": message.webhook_id,
                    "event_type": message.event_type,
                    "job_id": message.job_id,
                    "attempt": message.attempt,
                    "status": status,
                    "duration_ms": result.duration_ms,
                    "response_status": result.status,
                    "error": result.error,
                    "at": utcnow(),
                }
            )
        except StoreUnavailable as exc:  # the attempt happened; only its record is lost
            log.warning("webhook_attempt_unrecorded", error=str(exc)[:200])
        return status

    async def defer(self, message: WebhookMessage, *, stuck: bool = False) -> float | None:
        """Not sent now (its endpoint has as many deliveries in flight as it may): the same
        attempt into a delay queue, with its jitter; the step it waits (seconds), or None when
        the schedule has no step (the caller holds it instead). The first step's queue,
        unless the endpoint is `stuck` (its attempts in flight are not answered promptly):
        then the step of the times this message was deferred already by a stuck endpoint
        (the first, the second, ... the last), so that the messages of a hanging endpoint
        come back ever more rarely rather than go round the first step's queue for as long as
        it hangs. Only those deferrals count, and a deferral by a prompt endpoint starts the
        count again: a message that waited for a busy but prompt endpoint, or for one that
        hung before and answers again, starts at the first step when it (again) hangs."""
        if not self._schedule:
            return None
        if not stuck:
            step = self._schedule[0]
            await self._broker.retry_later(replace(message, deferrals=0), step, _jittered_ms(step))
            return step
        step = self._schedule[min(message.deferrals, len(self._schedule) - 1)]
        await self._broker.retry_later(message.deferred(), step, _jittered_ms(step))
        return step


@dataclass(frozen=True, slots=True)
class Attempt:
    """One sent attempt and its status, before what follows it is queued."""

    message: WebhookMessage
    result: SendResult
    status: str


def _jittered_ms(step: float) -> int:
    return round(step * 1000 * random.uniform(1 - JITTER, 1 + JITTER))


def retry_period_seconds(schedule: tuple[float, ...]) -> tuple[float, float]:
    """The shortest and longest time from the first attempt to the last (jitter included,
    the attempts' own time left out)."""
    total = sum(schedule)
    return total * (1 - JITTER), total * (1 + JITTER)

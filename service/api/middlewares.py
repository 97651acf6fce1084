"""Cross-cutting work for every request, in one middleware (`api_middleware`), in this order:

1. the request context: the request id (bound into every log line, echoed in
   `x-request-id`), `meta.url` (`request_url`, with the scheme and host a trusted reverse
   proxy gives) and one `request_finished` event per request;
2. the error envelope: every error, raised by us or by aiohttp, becomes the error envelope;
   an unexpected exception is logged with its traceback and answered 500 without it;
3. the body limit: a declared body over `MAX_REQUEST_BYTES` is refused before anything reads
   it;
4. authorization: for handlers marked with `requires_scope`, who is calling and whether
   their scope allows it;
5. the body deadline (`with_body_deadline`): a request body the handler reads must keep
   arriving.

One middleware rather than one each: aiohttp calls each through a `functools.partial` and a
coroutine of its own, and those frames were a tenth of a poll answered from memory
(docs/benchmarks.md, "Polling"). Each step is still a function of its own below.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from service.api.errors import (
    ApiError,
    Forbidden,
    RequestTooLarge,
    ServiceUnavailable,
    error_type_for,
)
from service.api.keys import (
    AUTHENTICATOR,
    LONG_POLL,
    PRINCIPAL,
    REQUEST_ID,
    REQUEST_URL,
    SETTINGS,
)
from service.api.responses import error_response
from service.domain.principal import ScopeDenied
from service.domain.request_ids import REQUEST_ID_HEADER, is_sane_request_id
from service.messaging.broker import BrokerUnavailable
from service.observability.metrics import HTTP_METRICS
from service.storage.mongo import StoreUnavailable

log = structlog.get_logger("medevents.http")

RETRY_AFTER_OUTAGE_SECONDS = "5"
# Metric labels take these, and "other": a client can send any token as a method.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SCOPE_ATTRIBUTE = "_medevents_required_scope"

HandlerFunction = Callable[[web.Request], Awaitable[web.StreamResponse]]


ScopeOf = Callable[[web.Request], str]


def requires_scope(scope: str | ScopeOf) -> Callable[[HandlerFunction], HandlerFunction]:
    """Mark a handler as needing an authenticated caller whose scope holds `scope`: a name,
    or a function of the request that names it (and may raise `NotFound` first)."""

    def mark(handler: HandlerFunction) -> HandlerFunction:
        setattr(handler, _SCOPE_ATTRIBUTE, scope)
        return handler

    return mark


def request_id_from(request: web.Request) -> str:
    """The caller's sane `x-request-id`, else a new one: 32 random hex digits, as
    `uuid.uuid4().hex` writes them, from `random` (seeded from the OS, reseeded in a forked
    child) rather than a system call per request: a request id names, it guards nothing."""
    candidate = request.headers.get(REQUEST_ID_HEADER)
    if candidate and is_sane_request_id(candidate):
        return candidate
    return f"{random.getrandbits(128):032x}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def request_url(request: web.Request) -> str:
    """`meta.url` as the original renders it: scheme, host, the port unless it is the scheme's
    default (80, 443), and the path, without the query string; the scheme and the host the
    client used when a trusted proxy says so (`forwarded_origin`). A malformed `Host` header
    leaves the path alone.

    The one absolute URL the API writes: links and `Location` headers are paths."""
    try:
        proto, forwarded_host = forwarded_origin(request)
        host: str | None
        if forwarded_host:
            host, port = _split_host(forwarded_host)
            scheme, path = proto or request.scheme, request.rel_url.raw_path
        else:
            relative = request.rel_url
            path = relative.raw_path
            if relative.absolute or not path.startswith("/") or "." in path:
                url = request.url  # what `request.url` joins differs from the path as sent
                host, port, path = url.raw_host, url.explicit_port, url.raw_path
            else:  # the path as sent, after the origin made once per scheme and Host header
                return _origin(proto or request.scheme, request.scheme, request.host) + path
            scheme = proto or request.scheme
        return _joined(scheme, host, port) + path
    except (ValueError, UnicodeError):
        try:
            return request.rel_url.raw_path
        except (ValueError, UnicodeError):
            return ""


@functools.lru_cache(maxsize=256)
def _origin(scheme: str, connection_scheme: str, authority: str) -> str:
    """`scheme://host[:port]` for the host and the explicit port of `request.url` for this
    connection's scheme and `Host` header (what `request.url` builds, for each request, with
    the path joined). ValueError (never kept) for a malformed or an empty host."""
    url = URL.build(scheme=connection_scheme, authority=authority)
    return _joined(scheme, url.raw_host, url.explicit_port)


def _joined(scheme: str, host: str | None, port: int | None) -> str:
    """`scheme://host[:port]`, without the scheme's default port; ValueError without a host."""
    if not host:
        raise ValueError("no host")
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}"


# X-Forwarded-Host: a DNS name (RFC 1123 labels), an IPv4 address or a bracketed IPv6
# address, then an optional port.
_FORWARDED_HOST = re.compile(
    r"(?:(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
)
_NOTHING_FORWARDED = ("", "")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def forwarded_origin(request: web.Request) -> tuple[str, str]:
    """The scheme and the host (`host[:port]`) the client used, as the reverse proxy in front
    says in `X-Forwarded-Proto` (`http` or `https`) and `X-Forwarded-Host`, when the direct
    peer is one of `TRUSTED_PROXIES`; "" for each that is not given, not believed, or not a
    scheme or a host (the connection's own then counts).

    A header with several values (a list, or several lines) counts by its last one: the value
    the trusted peer itself appended or set. Only the direct peer is trusted (one hop): the
    values before it came from further away, where anyone may have written them.

    Nothing is cloned or parsed for a request without these headers, nor at all while
    TRUSTED_PROXIES is empty (the default); the peer's address is parsed once per address."""
    headers = request.headers
    if "X-Forwarded-Proto" not in headers and "X-Forwarded-Host" not in headers:
        return _NOTHING_FORWARDED  # the common case, told apart without the settings
    networks = request.app[SETTINGS].trusted_proxies
    if not networks:
        return _NOTHING_FORWARDED
    proto_header = headers.getall("X-Forwarded-Proto", None)
    host_header = headers.getall("X-Forwarded-Host", None)
    remote = request.remote
    if remote is None or not peer_is_trusted(remote, networks):
        return _NOTHING_FORWARDED
    proto = _last_value(proto_header).lower()
    host = _last_value(host_header).lower()
    return (
        proto if proto in _DEFAULT_PORTS else "",
        host if _valid_forwarded_host(host) else "",
    )


@functools.lru_cache(maxsize=4096)
def peer_is_trusted(remote: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the peer address `remote` is in one of `networks` (remembered per address)."""
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:  # a Unix socket's peer, say
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
    return any(address in network for network in networks)


def _last_value(values: list[str] | None) -> str:
    if not values:
        return ""
    return values[-1].rpartition(",")[2].strip()


def _valid_forwarded_host(host: str) -> bool:
    """`host` (lowercased) is a name or an address, with a port from 1 to 65535 or none."""
    if not host or len(host) > 261 or _FORWARDED_HOST.fullmatch(host) is None:
        return False
    name, port = _split_host(host)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return False
    return port is None or 0 < port <= 65535


def _split_host(host: str) -> tuple[str, int | None]:
    """`example.com:8443` -> ("example.com", 8443); `[::1]` -> ("::1", None)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port else None


# The context variable behind structlog's `request_id` key (what `bound_contextvars` sets),
# set and reset directly: `bound_contextvars` copies the whole context twice a request.
_REQUEST_ID_VAR = structlog.contextvars.bind_contextvars(request_id=...)["request_id"].var


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The module docstring's steps, in its order. An exception the error envelope lets
    through (a redirect raised as `HTTPException`, a cancellation) leaves without a
    `request_finished` event, metrics or `x-request-id`, as aiohttp answers it itself."""
    request_id = request_id_from(request)
    request[REQUEST_ID] = request_id
    request[REQUEST_URL] = request_url(request)
    started = time.perf_counter()
    bound = _REQUEST_ID_VAR.set(request_id)
    try:
        try:
            refuse_large_body(request)
            authorize(request)
            if request.body_exists and not request.content.is_eof():
                response = await with_body_deadline(request, handler)
            else:  # nothing to wait for: no frame of its own
                response = await handler(request)
        except ApiError as exc:
            response = _error(
                request, exc.status, exc.error_type, exc.message, exc.headers, exc.invalid
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(request, exc)
        except (StoreUnavailable, BrokerUnavailable) as exc:
            response = _outage(request, exc)
        except Exception:
            log.exception("request_failed")
            response = _error(request, 500, "internal_error", "Internal server error")
        response.headers[REQUEST_ID_HEADER] = request_id
        _request_finished(request, response.status, time.perf_counter() - started)
    finally:
        _REQUEST_ID_VAR.reset(bound)
    return response


def _request_finished(request: web.Request, status: int, elapsed: float) -> None:
    """The request's one `request_finished` event, and its metrics."""
    method = request.method
    (_KEPT_LOG[0] if _KEPT_LOG else _kept_log()).info(
        "request_finished",
        method=method,
        path=request.path,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
    )
    route = route_pattern(request)
    HTTP_METRICS.observe(route, method if method in KNOWN_METHODS else "other", status, elapsed)


# `log` as the logger it stands for, once structlog keeps that one (`_kept_log`).
_KEPT_LOG: list[Any] = []


def _kept_log() -> Any:
    """The logger `log` stands for. Once configured (`configure_logging`), structlog keeps
    the logger of its first use (`cache_logger_on_first_use`), and `log.info` finds that one
    at every call through the lazy proxy (`__getattr__`, then `bind`): a tenth of the cost of
    a `request_finished` event, saved by keeping it here too. Until then, a new one each time,
    as the proxy makes."""
    bound = log.bind()
    if bound is log.bind():  # kept by structlog: the same logger from now on
        _KEPT_LOG.append(bound)
    return bound


def route_pattern(request: web.Request) -> str:
    """The route as declared (`/api/jobs/{job_id}`), so that metrics do not grow a label per
    id; "unmatched" for a path no route knows."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical + ("?wait" if request.get(LONG_POLL) else "")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """An error aiohttp raised (no route, a method not allowed, a body too large)."""
    headers = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
    return _error(request, exc.status, error_type_for(exc.status), exc.reason, headers)


def _outage(request: web.Request, exc: StoreUnavailable | BrokerUnavailable) -> web.Response:
    what = "job store" if isinstance(exc, StoreUnavailable) else "message broker"
    log.warning("dependency_unavailable", dependency=what, error=str(exc)[:300])
    outage = ServiceUnavailable(
        f"The {what} is unavailable, retry later",
        headers={"Retry-After": RETRY_AFTER_OUTAGE_SECONDS},
    )
    return _error(request, outage.status, outage.error_type, outage.message, outage.headers)


def _error(
    request: web.Request,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    invalid: list[dict] | None = None,
) -> web.Response:
    return error_response(
        request[REQUEST_URL], request[REQUEST_ID], status, error_type, message, headers, invalid
    )


def refuse_large_body(request: web.Request) -> None:
    """`RequestTooLarge` for a declared body over `MAX_REQUEST_BYTES`, before anything reads
    it."""
    length = request.content_length
    if length is not None:
        limit = request.app[SETTINGS].max_request_bytes
        if length > limit:
            raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes")


def authorize(request: web.Request) -> None:
    """For a handler marked with `requires_scope`: the caller (`PRINCIPAL`), whose scope must
    allow it (`Unauthorized`, `Forbidden` otherwise)."""
    scope = getattr(request.match_info.handler, _SCOPE_ATTRIBUTE, None)
    if callable(scope):
        scope = scope(request)
    if scope is None:
        return
    principal = request.app[AUTHENTICATOR].authenticate(request.headers)
    if scope not in principal.scopes:  # `require` for the one scope, without a list made
        try:
            principal.require(scope)
        except ScopeDenied as denied:
            raise Forbidden(str(denied)) from None
    request[PRINCIPAL] = principal


# The lowest average rate a request body may arrive at, in bytes a second, past its first
# HTTP_BODY_TIMEOUT_SECONDS: 128 kbit/s, a slow mobile link.
BODY_MIN_RATE = 16 * 1024


class BodyTimedOut(ApiError, TimeoutError):
    """The request's body did not arrive in time. Also a `TimeoutError`, so that aiohttp,
    finding it while it drops the rest of the body after the answer, closes the connection
    quietly."""

    status = 408
    error_type = "request_timeout"


async def with_body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`handler(request)` for a request with a body still to arrive: a read of it fails with
    `BodyTimedOut` (408 in the error envelope; the connection is then closed) once no byte of
    it has arrived for `HTTP_BODY_TIMEOUT_SECONDS` (idle), or once it is not whole that long
    plus a second per `BODY_MIN_RATE` bytes of its `Content-Length` (`MAX_REQUEST_BYTES` when
    chunked) after the handler began: 94 s for 1 MiB at the defaults. Progress is looked at
    every `min(1, idle / 4)` seconds, so an idle body is cut within that much past the
    timeout."""
    settings = request.app[SETTINGS]
    idle = settings.http_body_timeout_seconds
    size = request.content_length
    total = idle + (settings.max_request_bytes if size is None else size) / BODY_MIN_RATE
    tick = min(1.0, idle / 4)
    content = request.content
    loop = asyncio.get_running_loop()
    started = loop.time()
    received, progressed = content.total_bytes, started
    timer: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal received, progressed, timer
        if content.is_eof() or content.exception() is not None:
            return
        now = loop.time()
        if content.total_bytes != received:
            received, progressed = content.total_bytes, now
        if now - progressed >= idle:
            message = f"No byte of the request body arrived for {idle} s"
        elif now - started >= total:
            message = f"The request body was not received within {total:.0f} s"
        else:
            timer = loop.call_at(min(now + tick, progressed + idle, started + total), check)
            return
        content.set_exception(BodyTimedOut(message, headers={"Connection": "close"}))

    timer = loop.call_at(started + tick, check)
    try:
        return await handler(request)
    finally:
        timer.cancel()


MIDDLEWARES = (api_middleware,)

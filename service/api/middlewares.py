"""Cross-cutting work for every request, outermost first:

1. `request_context`: the request id (bound into every log line, echoed in `x-request-id`),
   `meta.url` (`request_url`, with the scheme and host a trusted reverse proxy gives) and
   one `request_finished` event per request.
2. `error_envelope`: every error, raised by us or by aiohttp, becomes the error envelope;
   an unexpected exception is logged with its traceback and answered 500 without it.
3. `body_limit`: a declared body over `MAX_REQUEST_BYTES` is refused before anything reads it.
4. `authorization`: for handlers marked with `requires_scope`, who is calling and whether
   their scope allows it.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import time
from collections.abc import Awaitable, Callable

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
            else:  # the path as sent, and the Host header parsed once
                host, port = _authority(request.scheme, request.host)
            scheme = proto or request.scheme
        if not host:
            raise ValueError("no host")
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
        return f"{scheme}://{netloc}{path}"
    except (ValueError, UnicodeError):
        try:
            return request.rel_url.raw_path
        except (ValueError, UnicodeError):
            return ""


@functools.lru_cache(maxsize=256)
def _authority(scheme: str, authority: str) -> tuple[str | None, int | None]:
    """The host and the explicit port of `request.url` for this scheme and `Host` header
    (what `request.url` builds, for each request, with the path joined)."""
    url = URL.build(scheme=scheme, authority=authority)
    return url.raw_host, url.explicit_port


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
    networks = request.app[SETTINGS].trusted_proxies
    if not networks:
        return _NOTHING_FORWARDED
    headers = request.headers
    proto_header = headers.getall("X-Forwarded-Proto", None)
    host_header = headers.getall("X-Forwarded-Host", None)
    if proto_header is None and host_header is None:
        return _NOTHING_FORWARDED
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
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_from(request)
    request[REQUEST_ID] = request_id
    request[REQUEST_URL] = request_url(request)
    started = time.perf_counter()
    bound = _REQUEST_ID_VAR.set(request_id)
    try:
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - started
        method = request.method
        status = response.status
        log.info(
            "request_finished",
            method=method,
            path=request.path,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
        route = route_pattern(request)
        HTTP_METRICS.observe(route, method if method in KNOWN_METHODS else "other", status, elapsed)
    finally:
        _REQUEST_ID_VAR.reset(bound)
    return response


def route_pattern(request: web.Request) -> str:
    """The route as declared (`/api/jobs/{job_id}`), so that metrics do not grow a label per
    id; "unmatched" for a path no route knows."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical + ("?wait" if request.get(LONG_POLL) else "")


@web.middleware
async def error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(request, exc.status, exc.error_type, exc.message, exc.headers, exc.invalid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
        return _error(request, exc.status, error_type_for(exc.status), exc.reason, headers)
    except (StoreUnavailable, BrokerUnavailable) as exc:
        what = "job store" if isinstance(exc, StoreUnavailable) else "message broker"
        log.warning("dependency_unavailable", dependency=what, error=str(exc)[:300])
        outage = ServiceUnavailable(
            f"The {what} is unavailable, retry later",
            headers={"Retry-After": RETRY_AFTER_OUTAGE_SECONDS},
        )
        return _error(request, outage.status, outage.error_type, outage.message, outage.headers)
    except Exception:
        log.exception("request_failed")
        return _error(request, 500, "internal_error", "Internal server error")


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


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = request.app[SETTINGS].max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"The request body is larger than the limit of {limit} bytes")
    return await handler(request)


@web.middleware
async def authorization(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = getattr(request.match_info.handler, _SCOPE_ATTRIBUTE, None)
    if callable(scope):
        scope = scope(request)
    if scope is not None:
        principal = request.app[AUTHENTICATOR].authenticate(request.headers)
        try:
            principal.require(scope)
        except ScopeDenied as denied:
            raise Forbidden(str(denied)) from None
        request[PRINCIPAL] = principal
    return await handler(request)


MIDDLEWARES = (request_context, error_envelope, body_limit, authorization)

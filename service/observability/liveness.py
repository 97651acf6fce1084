"""`/metrics` and `/health/live` of a process that serves no API (`medevents consumer`,
`medevents webhooks`), on `METRICS_PORT`.

The server runs on threads of its own (prometheus_client's WSGI app for `/metrics`, as
`start_http_server` serves it), so it keeps answering while the event loop is stuck: that is
what makes `/health/live` worth asking. The event loop refreshes a heartbeat (`Heartbeat.run`,
a timestamp written every second, or a quarter of the stall limit when that is shorter); the
probe answers 200 while the heartbeat is fresher than `LIVENESS_STALL_SECONDS`, 503 with the
reason once it is older: a loop blocked by a synchronous call, a busy loop, a deadlock. Any
other path answers the metrics, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.registry import Collector

log = structlog.get_logger("medevents.probes")

LIVENESS_PATH = "/health/live"
HEARTBEAT_MAX_INTERVAL_SECONDS = 1.0

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Heartbeat:
    """The event loop's last sign of life, read from the probe's threads."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.interval = min(HEARTBEAT_MAX_INTERVAL_SECONDS, stall_seconds / 4)
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def age(self) -> float:
        """Seconds since the loop last beat."""
        return time.monotonic() - self._last

    def stalled(self) -> bool:
        return self.age() > self.stall_seconds

    async def run(self) -> None:
        """Beat every `interval` until cancelled: on the loop being watched."""
        while True:
            self.beat()
            await asyncio.sleep(self.interval)


def probe_app(heartbeat: Heartbeat, registry: Collector = REGISTRY) -> WsgiApp:
    """`/health/live` from `heartbeat`; every other path prometheus_client's metrics app."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != LIVENESS_PATH:
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        age = heartbeat.age()
        if age > heartbeat.stall_seconds:
            status = "503 Service Unavailable"
            text = (
                f"event loop stalled: no heartbeat for {age:.2f} s"
                f" (LIVENESS_STALL_SECONDS={heartbeat.stall_seconds:g})\n"
            )
        else:
            status = "200 OK"
            text = f"live: event loop heartbeat {age:.2f} s ago\n"
        body = text.encode()
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    # A connection that sends nothing is closed after this, instead of keeping its thread.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing per request: probes and scrapes come every few seconds."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck request never keeps the process from exiting


class ProbeServer:
    """The running server and the heartbeat task; `aclose()` stops both."""

    def __init__(self, server: WSGIServer, heartbeat: Heartbeat, beating: asyncio.Task) -> None:
        self._server = server
        self.heartbeat = heartbeat
        self._beating = beating
        self._thread = threading.Thread(
            target=server.serve_forever, name="medevents-probes", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    async def aclose(self) -> None:
        self._beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beating
        await asyncio.to_thread(self._server.shutdown)  # returns within its poll interval
        self._server.server_close()


async def serve_probes(host: str, port: int, stall_seconds: float) -> ProbeServer | None:
    """`/metrics` and `/health/live` on `host:port`, watching the running loop; None when
    `port` is 0, or taken (another process of this host has it: run without, as before)."""
    if not port:
        return None
    family = _address_family(host, port)

    class Server(_ThreadingServer):
        address_family = family

    heartbeat = Heartbeat(stall_seconds)
    try:
        server = make_server(host, port, probe_app(heartbeat), Server, _QuietHandler)
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=port, error=str(exc))
        return None
    beating = asyncio.create_task(heartbeat.run(), name="medevents-heartbeat")
    probes = ProbeServer(server, heartbeat, beating)
    base = f"http://{_url_host(host)}:{probes.port}"
    log.info("metrics_serving", url=f"{base}/metrics", liveness=f"{base}{LIVENESS_PATH}")
    return probes


def _address_family(host: str, port: int) -> socket.AddressFamily:
    """IPv6 for an IPv6 address (WSGIServer binds IPv4 otherwise), as prometheus_client's
    own server does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return socket.AF_INET
    return infos[0][0] if infos else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

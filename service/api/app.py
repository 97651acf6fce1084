"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from service.api.auth import build_authenticator
from service.api.keys import (
    AUTHENTICATOR,
    ENTITY_READS,
    ENTITY_STORE,
    JOB_SERVICE,
    OPENAPI_DOCUMENT,
    OPERATOR_SERVICE,
    SERVICES,
    SETTINGS,
)
from service.api.middlewares import MIDDLEWARES
from service.api.openapi import openapi_document
from service.api.routes import setup_routes
from service.api.views.jobs import PENDING_POLLS
from service.bootstrap import Services
from service.config import Settings
from service.messaging.broker import BrokerUnavailable
from service.usecases.finished_jobs import FinishedJobs
from service.usecases.pending_polls import PendingPolls

log = structlog.get_logger("medevents.app")


def create_app(services: Services) -> web.Application:
    """The API over what `services` built; the app closes them at its cleanup.

    `services.settings.mongodb_url` must be set (the bootstrap says so when it is not): the CLI
    starts the embedded server first when the environment names none. The routes of
    submissions and their OpenAPI operations come from the job types of `services.registry`.
    """
    settings = services.settings
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_request_bytes)
    app[SERVICES] = services
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = build_authenticator(settings)
    app[OPENAPI_DOCUMENT] = openapi_document(services.registry)
    app[JOB_SERVICE] = services.job_service
    services.job_service.finished_jobs = FinishedJobs(settings.finished_job_cache_bytes)
    # Pending jobs answered from memory, for a bounded time, while the finish events are heard.
    pending = PendingPolls(settings.pending_job_cache_ms / 1000)
    services.job_events.listen(pending)
    app[PENDING_POLLS] = pending
    app[OPERATOR_SERVICE] = services.operator_service
    app[ENTITY_STORE] = services.entities
    app[ENTITY_READS] = services.entity_reads
    app.cleanup_ctx.append(lifetime)
    setup_routes(app, services.registry)
    return app


async def lifetime(app: web.Application) -> AsyncIterator[None]:
    """What the API needs running while it serves. It serves even while MongoDB or the broker
    is down: requests answer 503 until they are back."""
    services = app[SERVICES]
    try:
        await services.prepare_storage()
        try:  # the publisher connects now if it can, else at its first use
            await services.publisher.connect()
        except BrokerUnavailable:
            log.warning("broker_unavailable_at_start")
        await services.job_events.start()  # the long polls' wake-up calls
        yield
    finally:
        await services.aclose()


def server_options(settings: Settings) -> dict[str, Any]:
    """How each connection treats slow clients: the options of `HeadDeadline` (`serve`).

    - A request's head (request line and headers): `HeadDeadline` closes the connection when
      a head is not whole `HTTP_HEADER_TIMEOUT_SECONDS` after its first byte. A new
      connection's clock starts when it opens, so a connection that never sends a byte is cut
      as soon; one that has been answered and sends nothing is idle keep-alive instead.
    - Idle keep-alive: aiohttp closes a connection that has waited `keepalive_timeout`
      (`HTTP_KEEPALIVE_TIMEOUT_SECONDS`, 75 s by default, aiohttp's own default) since its
      previous response without a request arriving. A proxy that keeps upstream connections
      must drop them sooner (ingress-nginx and AWS ALB: 60 s), or it reuses one just as the API
      closes it (a 502). A request being answered (a long poll) is never cut.
    - The body: the middleware's body deadline (`middlewares.with_body_deadline`) answers
      408 when a body the handler reads goes
      `HTTP_BODY_TIMEOUT_SECONDS` without a byte, or is not whole within that plus a second
      per `BODY_MIN_RATE` bytes declared; a body no handler reads (the request was refused
      first) is read and dropped for at most `lingering_time`, then the connection is closed.
    """
    return {
        "head_timeout": float(settings.http_header_timeout_seconds),
        "keepalive_timeout": float(settings.http_keepalive_timeout_seconds),
        "lingering_time": float(min(settings.http_body_timeout_seconds, 10)),
    }


class HeadDeadline(web.RequestHandler):
    """aiohttp's HTTP/1 connection (`web.RequestHandler`), with a deadline on request heads.

    A timer starts at a head's first byte (a new connection's: when it opens) and is cancelled
    when the parser completes the head; when it fires, the connection is closed (no answer:
    the client has not finished asking). A head that arrives whole in one read is never timed
    (it has nothing left to wait for). Bytes of a body are not a head's: after a head, the
    next head begins once that request's body is whole. Idle keep-alive (no byte since the
    previous answer) is left to aiohttp's `keepalive_timeout`, whose timer a head's first
    byte cancels (public `keep_alive(True)`): a head begun just before it would fire is timed
    by the head deadline alone.

    aiohttp has no public hook for "a head is complete", so `data_received` looks at one
    private name: `RequestHandler._messages`, the deque of (message, payload) its parser has
    completed and no handler has taken yet (there since aiohttp 3.0; each call of
    `data_received` appends what it parsed, and only `start()` takes from the front). Should it
    go, the first request fails loudly (AttributeError) and tests/integration/
    test_http_server.py with it, rather than the deadline silently lapsing.
    """

    __slots__ = ("_awaiting_head", "_head_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True  # the next bytes to arrive begin (or continue) a head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_timer()  # a new connection's first head: timed from its opening

    def data_received(self, data: bytes) -> None:
        head_begins = bool(data) and self._awaiting_head
        already = len(self._messages)
        super().data_received(data)
        if len(self._messages) > already:  # heads completed by these bytes
            self._stop_head_timer()
            self._awaiting_head = False
            _, payload = self._messages[-1]
            # Once its body is whole (at once without one), the next byte begins a head. (A
            # rest of a head received together with the end of the one before waits until more
            # bytes come, or for the keep-alive timeout.)
            payload.on_eof(self._body_complete)
        elif head_begins:
            # A head begun and not whole: timed from now (a no-op while the timer runs, from
            # the head's first bytes). No longer idle: aiohttp's keep-alive timer (which would
            # close the connection while the head arrives) is cancelled; it is armed again
            # after the answer. A head whole in the bytes that begin it (nearly every request)
            # needs neither: no timer is made and cancelled for it, and aiohttp's keep-alive
            # timer, which does not close a connection with a request in hand, is left to
            # aiohttp, which moves its deadline after the answer without making a new one.
            self._start_head_timer()
            self.keep_alive(True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _body_complete(self) -> None:
        self._awaiting_head = True

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.force_close()


async def serve(app: web.Application, settings: Settings, sockets: list[socket.socket]) -> None:
    """Serves `app` on the listening `sockets` until cancelled: `web.run_app`'s part inside
    the loop, with `HeadDeadline` connections (`web.run_app` has no option for a connection
    class). SIGINT and SIGTERM raise `web.GracefulExit` out of the loop (`handle_signals`);
    cancelled, it stops listening, lets requests in progress finish (60 s at most, aiohttp's
    `shutdown_timeout`), then runs the app's cleanup."""
    loop = asyncio.get_running_loop()
    options = server_options(settings)
    runner = web.AppRunner(app, handle_signals=True, access_log=None)
    await runner.setup()  # the app's startup; `runner.server` tracks the connections
    servers: list[asyncio.AbstractServer] = []
    try:
        manager = runner.server
        assert manager is not None

        def connection() -> HeadDeadline:
            # The request logs are the API middleware's `request_finished` events, not
            # aiohttp's access log.
            return HeadDeadline(manager, loop=loop, access_log=None, **options)

        for sock in sockets:
            servers.append(await loop.create_server(connection, sock=sock, backlog=128))
        await loop.create_future()  # until cancelled
    finally:
        for server in servers:  # as `runner.cleanup()` stops its sites: no new connections
            server.close()
        await runner.cleanup()

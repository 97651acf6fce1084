"""What the webhook tests share: a local receiver, the Standard Webhooks verification written
from the specification's text (not the service's signing code), and the running parts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from service.bootstrap import Services
from service.config import Settings
from service.messaging.broker import Topology, delete_topology
from service.messaging.webhooks import WebhookTopology, delete_webhook_topology

# The schedules the tests use (their delay queues are deleted after each test).
SCHEDULES = ((0.2, 0.4), (0.3,), ())


def verify_standard_webhook(secret: str, headers: Any, body: bytes, tolerance: int = 300) -> bool:
    """The specification, "Verifying signatures": the content signed is
    `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 with the secret's bytes (base64 after
    `whsec_`), base64 encoded, `v1,` in front; `webhook-signature` is a space-delimited list of
    such signatures, any one of which may match; the timestamp must be recent."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


class Receiver:
    """An HTTP server on 127.0.0.1: each request answered by the next of `behaviours` (a
    status, or "hang": no answer for a minute), the last one repeated; every request kept."""

    def __init__(self, behaviours: list[int | str] | None = None) -> None:
        self.behaviours = list(behaviours or [200])
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        behaviour = self.behaviours.pop(0) if len(self.behaviours) > 1 else self.behaviours[0]
        self.requests.append(
            {
                "headers": dict(request.headers),
                "body": body,
                "at": time.monotonic(),
                "behaviour": behaviour,
            }
        )
        if behaviour == "hang":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self._released.wait()
            return web.Response(status=504, text="released")
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=int(behaviour), text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self, behaviour: int | str | None = None) -> list[dict[str, Any]]:
        return [
            orjson.loads(r["body"])
            for r in self.requests
            if behaviour is None or r["behaviour"] == behaviour
        ]


async def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def webhook_settings(settings: Settings, **changes: Any) -> Settings:
    values = {
        "webhook_allow_insecure": True,
        "webhook_retry_schedule": (0.2, 0.4),
        "webhook_timeout_seconds": 1,
        "webhook_endpoint_cache_seconds": 0,
        "webhook_prefetch": 8,
        **changes,
    }
    return settings.with_changes(**values)


async def delete_test_topologies(amqp_url: str, prefix: str) -> None:
    """Everything a test's service declared on the shared broker under `prefix`: the jobs'
    exchanges and queues, and the webhooks' (with the default retry schedule or a test's)."""
    with contextlib.suppress(OSError):  # no broker: nothing was declared
        await delete_topology(amqp_url, Topology(prefix))
        for schedule in {Settings().webhook_retry_schedule, *SCHEDULES}:
            await delete_webhook_topology(amqp_url, WebhookTopology(prefix), schedule)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, consumer: bool = True, webhooks: bool = True):
    """The consumer (with its notifier) and the webhook worker of `settings`, in this process
    (as `medevents run` runs them), on a `Services` of their own."""
    from consumers.processors import builtin_registry
    from consumers.worker import build_consumer
    from service.webhooks_delivery import build_worker

    async with Services(settings, builtin_registry()) as services:
        await services.prepare_storage()
        if consumer:
            await build_consumer(services).start()
        if webhooks:
            await build_worker(services).start()
        yield services

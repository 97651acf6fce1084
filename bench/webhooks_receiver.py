"""The webhook benchmark's receiver: an aiohttp server on uvloop, in a process of its own.

    python bench/webhooks_receiver.py PORT

- `POST /hook/{name}`: a healthy endpoint. Verifies the Standard Webhooks signature (HMAC-SHA256
  of `{webhook-id}.{webhook-timestamp}.{body}` with the endpoint's secret, as docs/webhooks.md's
  `verify`) when a secret was given for `name`, answers 204, and keeps the arrival time
  (`time.time()`) and the body; a bad signature is counted and answered 401.
- `POST /hang/{name}`: a hanging endpoint: reads the request, then never answers (an hour).
- `PUT /secrets/{name}` (body: the secret): verify `name`'s deliveries with it.
- `GET /wait/{name}?count=N&timeout=S`: answers once `name` received N deliveries (or after S
  seconds): a long poll, so waiting for the end adds no load while the measure runs.
- `GET /report/{name}`: `{"received", "bad_signatures", "hanging", "deliveries": [[arrival,
  job end (the body's timestamp, epoch seconds), webhook-id], ...]}`, bodies parsed only here.
- `DELETE /state`: forget everything (between runs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sys
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson
import uvloop
from aiohttp import web


class State:
    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {}
        self.reset()

    def reset(self) -> None:
        self.received: defaultdict[str, list[tuple[float, str, bytes]]] = defaultdict(list)
        self.bad: defaultdict[str, int] = defaultdict(int)
        self.hanging: defaultdict[str, int] = defaultdict(int)
        self.waiters: defaultdict[str, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)


def signed_by(key: bytes, headers: Any, body: bytes) -> bool:
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > 300:
        return False
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        hmac.compare_digest(sig.partition(",")[2], expected)
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def build_app() -> web.Application:
    state = State()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        name = request.match_info["name"]
        key = state.secrets.get(name)
        if key is not None and not signed_by(key, request.headers, body):
            state.bad[name] += 1
            return web.Response(status=401)
        got = state.received[name]
        got.append((arrived, request.headers.get("webhook-id", ""), body))
        waiting = state.waiters[name]
        if waiting:
            for count, future in list(waiting):
                if len(got) >= count and not future.done():
                    future.set_result(None)
            waiting[:] = [(c, f) for c, f in waiting if not f.done()]
        return web.Response(status=204)

    async def hang(request: web.Request) -> web.Response:
        await request.read()
        state.hanging[request.match_info["name"]] += 1
        await asyncio.sleep(3600)
        return web.Response(status=204)

    async def put_secret(request: web.Request) -> web.Response:
        secret = (await request.text()).strip()
        state.secrets[request.match_info["name"]] = base64.b64decode(secret.removeprefix("whsec_"))
        return web.Response(status=204)

    async def wait(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        count = int(request.query["count"])
        timeout = float(request.query.get("timeout", "120"))
        if len(state.received[name]) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters[name].append((count, future))
            try:
                await asyncio.wait_for(future, timeout)
            except TimeoutError:
                pass
        return web.json_response({"received": len(state.received[name])})

    async def report(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        deliveries = []
        for arrived, webhook_id, body in state.received[name]:
            stamp = orjson.loads(body)["timestamp"].replace("Z", "+00:00")
            deliveries.append([arrived, datetime.fromisoformat(stamp).timestamp(), webhook_id])
        answer = {
            "received": len(deliveries),
            "bad_signatures": state.bad[name],
            "hanging": state.hanging[name],
            "deliveries": deliveries,
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def forget(_: web.Request) -> web.Response:
        for waiting in state.waiters.values():
            for _, future in waiting:
                if not future.done():
                    future.cancel()
        state.reset()
        return web.Response(status=204)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/hook/{name}", hook)
    app.router.add_post("/hang/{name}", hang)
    app.router.add_put("/secrets/{name}", put_secret)
    app.router.add_get("/wait/{name}", wait)
    app.router.add_get("/report/{name}", report)
    app.router.add_delete("/state", forget)
    return app


if __name__ == "__main__":
    web.run_app(
        build_app(),
        loop=uvloop.new_event_loop(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        shutdown_timeout=0.5,
    )

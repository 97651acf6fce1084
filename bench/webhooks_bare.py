"""The webhook benchmark's baselines, each a process of its own on uvloop (as `medevents
webhooks` runs), sending what ours sends to the same receiver.

    python bench/webhooks_bare.py http PLAN.json
    python bench/webhooks_bare.py amqp PLAN.json

- `http`: a bare aiohttp client POSTing the plan's deliveries (`{"concurrency", "deliveries":
  [[url, secret, webhook_id, body], ...]}`), each signed as ours signs it (Standard Webhooks,
  HMAC-SHA256), `concurrency` at once, on one session: the framework's limit.
- `amqp`: a bare dispatcher: consumes the webhooks' delivery queue ours consumes (`{"amqp_url",
  "queue", "prefetch", "count", "endpoints": {endpoint_id: [url, secret]}}`), and for each
  message signs, POSTs and acks: no MongoDB (no endpoint read, no attempt recorded), no
  per-endpoint cap, no retry queue. Exits after `count` messages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sys
import time
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import uvloop


def signed_headers(key: bytes, webhook_id: str, body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def key_of(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=10),
        trust_env=False,
        auto_decompress=False,
    )


async def post(http: aiohttp.ClientSession, url: str, key: bytes, wid: str, body: bytes) -> None:
    async with http.post(url, data=body, headers=signed_headers(key, wid, body)) as response:
        await response.content.read(4096)
        if response.status >= 300:
            raise RuntimeError(f"{url} answered {response.status}")


async def bare_http(plan: dict) -> None:
    deliveries = iter(plan["deliveries"])
    keys: dict[str, bytes] = {}

    async def worker(http: aiohttp.ClientSession) -> None:
        for url, secret, webhook_id, body in deliveries:
            key = keys.get(secret) or keys.setdefault(secret, key_of(secret))
            await post(http, url, key, webhook_id, body.encode())

    async with session() as http:
        await asyncio.gather(*(worker(http) for _ in range(plan["concurrency"])))


async def bare_amqp(plan: dict) -> None:
    endpoints = {e: (url, key_of(secret)) for e, (url, secret) in plan["endpoints"].items()}
    done = asyncio.Event()
    handled = 0
    connection = await aio_pika.connect(plan["amqp_url"])
    async with connection, session() as http:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=plan["prefetch"])
        queue = await channel.declare_queue(plan["queue"], passive=True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            headers = message.headers
            url, key = endpoints[str(headers["x-endpoint-id"])]
            await post(http, url, key, str(headers["x-webhook-id"]), message.body)
            await message.ack()
            handled += 1
            if handled >= plan["count"]:
                done.set()

        await queue.consume(handle)
        await done.wait()


if __name__ == "__main__":
    mode, plan_file = sys.argv[1], sys.argv[2]
    loaded = orjson.loads(Path(plan_file).read_bytes())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bare_http(loaded) if mode == "http" else bare_amqp(loaded))

"""The bare baselines of the polling benchmark (`bench/polling.py`), each a process of its own
on uvloop, as `medevents api` runs (one event loop for every server compared):

    baseline_server.py find PORT MONGODB_URL DB
        (a) a bare aiohttp handler: `find_one` of the job by `_id` and `json.dumps` of it, on
        the same MongoDB server and data as the service; no auth, schemas or middleware
    baseline_server.py constant PORT RESPONSES_JSON
        (b) a bare aiohttp handler answering a constant response, the framework's limit:
        RESPONSES_JSON holds `{"responses": {KIND: {"status", "headers", "body"}},
        "kinds": {JOB_ID: KIND}}` (the service's own answer to a job of each kind, captured
        by the benchmark), so a poll of a job gets a body of the very size the service
        answers it with, at the cost of one dict lookup

Both answer `GET /_loop` with the class of their event loop, which the benchmark checks.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
from aiohttp import web
from pymongo import AsyncMongoClient


async def loop_class(request: web.Request) -> web.Response:
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{type(loop).__module__}.{type(loop).__qualname__}")


def find_app(mongodb_url: str, db_name: str) -> web.Application:
    """(a): `find_one` + `json.dumps` of the job, 200 whatever it finds (null when none)."""
    app = web.Application()

    async def mongo(app: web.Application) -> AsyncIterator[None]:
        client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
        app["jobs"] = client[db_name]["jobs"]
        yield
        await client.close()

    async def get_job(request: web.Request) -> web.Response:
        job = await request.app["jobs"].find_one({"_id": request.match_info["job_id"]})
        return web.Response(
            body=json.dumps(job, default=str).encode(), content_type="application/json"
        )

    app.cleanup_ctx.append(mongo)
    app.router.add_get("/api/jobs/{job_id}", get_job)
    app.router.add_get("/_loop", loop_class)
    return app


def constant_app(responses_file: Path) -> web.Application:
    """(b): per job id, the captured response of its kind, made once: status, headers, body."""
    spec = json.loads(responses_file.read_text())
    made = {
        kind: (answer["status"], answer["headers"], answer["body"].encode())
        for kind, answer in spec["responses"].items()
    }
    by_id = {job_id: made[kind] for job_id, kind in spec["kinds"].items()}
    default = next(iter(made.values()))
    app = web.Application()

    async def get_job(request: web.Request) -> web.Response:
        status, headers, body = by_id.get(request.match_info["job_id"], default)
        return web.Response(status=status, headers=headers, body=body)

    app.router.add_get("/api/jobs/{job_id}", get_job)
    app.router.add_get("/_loop", loop_class)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[1], int(argv[2])
    app = find_app(argv[3], argv[4]) if kind == "find" else constant_app(Path(argv[3]))
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main(sys.argv)

"""Baselines for the polling benchmark, on the same MongoDB server as the service:

baseline_server.py find PORT MONGODB_URL DB   a bare aiohttp handler: find_one + json.dumps,
                                               no auth, no schemas, no middleware
baseline_server.py constant PORT              a bare aiohttp handler returning a constant body
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from pymongo import AsyncMongoClient

CONSTANT = json.dumps({"data": {"status": "pending"}, "meta": {"code": 200}}).encode()


def find_app(mongodb_url: str, db_name: str) -> web.Application:
    app = web.Application()

    async def mongo(app: web.Application) -> AsyncIterator[None]:
        client = AsyncMongoClient(mongodb_url, tz_aware=True)
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
    return app


def constant_app() -> web.Application:
    app = web.Application()

    async def get_job(request: web.Request) -> web.Response:
        return web.Response(body=CONSTANT, content_type="application/json")

    app.router.add_get("/api/jobs/{job_id}", get_job)
    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = find_app(sys.argv[3], sys.argv[4]) if kind == "find" else constant_app()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)

"""Liveness and readiness, against the real MongoDB server and broker, and without them."""

from __future__ import annotations

from service.storage.embedded import free_port
from tests.integration.conftest import app_for


async def test_live_and_ready(api) -> None:
    live = await api.get("/health/live")
    assert live.status == 200
    assert (await live.json())["data"] == {"status": "ok"}

    ready = await api.get("/health/ready")
    body = await ready.json()
    assert ready.status == 200 and body["meta"]["code"] == 200
    assert body["data"] == {"status": "ok", "checks": {"mongodb": "ok", "broker": "ok"}}
    assert body["meta"]["request_id"] == ready.headers["x-request-id"]


async def test_not_ready_without_mongodb_or_broker(aiohttp_client, settings) -> None:
    nowhere = settings.with_changes(
        mongodb_url=f"mongodb://127.0.0.1:{free_port()}/",
        mongodb_timeout_ms=300,
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    )
    client = await aiohttp_client(app_for(nowhere))
    assert (await client.get("/health/live")).status == 200
    ready = await client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 503 and body["meta"]["code"] == 503
    assert body["data"] == {
        "status": "unavailable",
        "checks": {"mongodb": "unavailable", "broker": "unavailable"},
    }

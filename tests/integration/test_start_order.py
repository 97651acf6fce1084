"""Processes started before the servers they need: `medevents api` and `medevents consumer`
come up with MongoDB and the broker unreachable, say why they wait, retry with backoff, serve
as soon as both are up, and stop cleanly on SIGTERM within the grace period."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from bench.common import wait_up
from consumers.consumer import STOP_TIMEOUT_SECONDS
from service.storage.embedded import free_port
from tests.conftest import TEST_SECRET, bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, GatedProxy, example, start_medevents


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def wait_for_event(log: Path, name: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log):
            if event.get("event") == name:
                return event
        await asyncio.sleep(0.1)
    seen = [event.get("event") for event in events(log)]
    raise AssertionError(f"no {name} in {log.name}; seen: {seen}")


@pytest.mark.faults
@pytest.mark.timeout(180)
async def test_processes_wait_for_servers_that_come_up_after_them(settings, db, patients, tmp_path):
    mongo = urlsplit(settings.mongodb_url)
    amqp = urlsplit(settings.amqp_url)
    mongo_proxy = GatedProxy(mongo.hostname, mongo.port)
    broker_proxy = GatedProxy(amqp.hostname, amqp.port or 5672)
    port = free_port()
    unreachable = {
        "MONGODB_URL": f"mongodb://127.0.0.1:{mongo_proxy.port}/",
        "MONGODB_TIMEOUT_MS": "500",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{broker_proxy.port}/",
    }
    api_log, consumer_log = tmp_path / "api.log", tmp_path / "consumer.log"
    with api_log.open("ab") as output:
        api = start_medevents(
            "api",
            settings,
            tmp_path / "data",
            output,
            JWT_SECRET=TEST_SECRET,
            HTTP_PORT=str(port),
            **unreachable,
        )
    with consumer_log.open("ab") as output:
        consumer = start_medevents(
            "consumer",
            settings,
            tmp_path / "data",
            output,
            SIGNATURE_MODE="decode",  # the example's package is unsigned
            **unreachable,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # Both say why they wait, and the consumer backs off.
        await wait_for_event(api_log, "mongodb_unavailable_at_start")
        await wait_for_event(api_log, "broker_unavailable_at_start")
        await wait_for_event(consumer_log, "mongodb_unavailable_at_start")
        first = await wait_for_event(consumer_log, "broker_unavailable_at_start")
        await asyncio.sleep(first["retry_in_s"] + 0.5)
        retries = [e for e in events(consumer_log) if e["event"] == "broker_unavailable_at_start"]
        assert len(retries) >= 2 and retries[1]["retry_in_s"] > retries[0]["retry_in_s"]
        # The API is alive and says it is not ready.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health/live") as response:
                assert response.status == 200
            async with http.get(f"{base}/health/ready") as response:
                assert response.status == 503
        assert api.poll() is None and consumer.poll() is None

        await mongo_proxy.open()
        await broker_proxy.open()
        await wait_up(f"{base}/health/ready", attempts=300)
        await wait_for_event(consumer_log, "consumer_started", timeout=40)

        submission = example("encounter_package")
        headers = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
        async with aiohttp.ClientSession() as http:
            url = f"{base}/api/patients/{ACTIVE_PATIENT}/encounter_package"
            async with http.post(url, json=submission["data"], headers=headers) as response:
                assert response.status == 202
                location = response.headers["Location"]
            async with http.get(f"{base}{location}?wait=30", headers=headers) as response:
                body = await response.json()
        assert body["data"]["status"] == "processed", body
    finally:
        stopping = time.monotonic()
        for process in (api, consumer):
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=STOP_TIMEOUT_SECONDS + 15) for process in (api, consumer)]
        stopped_in = time.monotonic() - stopping
        await mongo_proxy.close()
        await broker_proxy.close()
    assert codes == [0, 0]
    assert stopped_in < STOP_TIMEOUT_SECONDS
    assert any(e["event"] == "consumer_stopped" for e in events(consumer_log))

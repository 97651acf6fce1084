"""Webhooks' safety and durability: the SSRF refusals at registration (http without
WEBHOOK_ALLOW_INSECURE, loopback, private, link-local and IPv6 loopback addresses, a name that
resolves to loopback) and at delivery (a name resolving to a private address then: refused,
recorded failed, set aside); and delivery surviving a SIGKILL of the `medevents webhooks`
process: every event delivered at least once after a restart."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from consumers.processors import builtin_registry
from service.api.app import create_app
from service.bootstrap import Services
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus, new_job_id
from service.webhooks_delivery import HttpSender
from tests.conftest import CLIENT_ID, bearer
from tests.harness import start_medevents
from tests.integration.webhook_harness import (
    Receiver,
    running,
    wait_until,
    webhook_settings,
)

HOOKS = bearer(CLIENT_ID, ("webhook:write",))
ADMIN = bearer("ops", ("jobs:admin",))


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",
        "https://127.0.0.1/hook",
        "https://127.1.2.3:8443/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        "https://localhost/hook",
        "https://user:pass@93.184.216.34/hook",
    ],
)
async def test_registration_refuses_unsafe_urls(aiohttp_client, settings, db, url):
    api = await aiohttp_client(create_app(Services(settings, builtin_registry())))
    response = await api.post(
        "/api/webhooks", json={"url": url, "events": ["job.failed"]}, headers=HOOKS
    )
    body = await response.json()
    assert response.status == 422, body
    assert [e["entry"] for e in body["error"]["invalid"]] == ["$.url"]


async def test_registration_takes_a_public_https_address(aiohttp_client, settings, db):
    api = await aiohttp_client(create_app(Services(settings, builtin_registry())))
    response = await api.post(
        "/api/webhooks",
        json={"url": "https://93.184.216.34/hook", "events": ["job.processed"]},
        headers=HOOKS,
    )
    assert response.status == 201, await response.json()


class PrivateResolver:
    """A name that resolved to a public address when it was registered, and now resolves to
    a private one (DNS rebinding)."""

    def __init__(self) -> None:
        pass

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {
                "hostname": host,
                "host": "10.0.0.5",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self):
        pass


async def test_delivery_refuses_a_name_resolving_to_a_private_address(
    aiohttp_client, settings, db, monkeypatch
):
    monkeypatch.setattr("service.webhooks_delivery.BoundedResolver", PrivateResolver)
    safe = webhook_settings(settings, webhook_allow_insecure=False)
    api = await aiohttp_client(create_app(Services(safe, builtin_registry())))
    async with running(safe, consumer=False) as services:
        # Registered when the name was public (written as registration writes it).
        endpoint = await services.webhook_store.create(
            {
                "_id": "0b5c1c9e-52e3-4d7b-9f3e-111111111111",
                "client_id": CLIENT_ID,
                "url": "https://hooks.example.org/hook",
                "events": ["job.failed"],
                "secrets": [{"key": "whsec_" + "A" * 44, "expires_at": None}],
                "created_at": utcnow(),
            }
        )
        await services.webhook_notifier.job_ended(ended_job())

        async def listed():
            response = await api.get(f"/api/webhooks/{endpoint['_id']}/deliveries", headers=HOOKS)
            return (await response.json())["data"]

        [attempt] = await wait_until(listed, what="the refused attempt")
        assert (attempt["status"], attempt["error"]) == ("failed", "address_refused")
        assert attempt["response_status"] is None

        async def dead() -> int:
            response = await api.get("/api/admin/webhooks/dead-letters", headers=ADMIN)
            return (await response.json())["data"]["dead_letters"]

        assert await wait_until(dead, what="set aside") == 1


async def test_the_sender_refuses_loopback_by_name_and_by_address():
    receiver = await Receiver([200]).start()
    sender = HttpSender(2, allow_insecure=False)
    try:
        for url in (
            f"https://localhost:{receiver.port}/hook",
            f"https://127.0.0.1:{receiver.port}/hook",
            f"http://localhost:{receiver.port}/hook",
        ):
            result = await sender.send(url, {}, b"{}")
            assert not result.ok and result.permanent, (url, result)
        assert receiver.requests == []
    finally:
        await sender.close()
        await receiver.stop()


def ended_job(job_id: str | None = None) -> dict:
    now = utcnow()
    return {
        "_id": job_id or new_job_id(),
        "type": "encounter_package.create",
        "client_id": CLIENT_ID,
        "status": int(JobStatus.FAILED),
        "status_code": 404,
        "error": {"type": "not_found", "message": "Patient not found"},
        "eta": now,
        "updated_at": now,
    }


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_delivery_survives_a_sigkill_of_the_webhooks_process(settings, db, tmp_path):
    receiver = await Receiver([200]).start()
    receiver.delay = 0.3  # each delivery takes a while: some are in flight at the kill
    wh = webhook_settings(settings)
    env = {
        "WEBHOOK_ALLOW_INSECURE": "1",
        "WEBHOOK_RETRY_SCHEDULE": "0.2,0.4",
        "WEBHOOK_PREFETCH": "4",
        "WEBHOOK_TIMEOUT_SECONDS": "5",
    }
    log_file = tmp_path / "webhooks.log"
    process = None
    try:
        async with Services(wh, builtin_registry()) as services:
            await services.prepare_storage()
            endpoint = await services.webhook_service.create(
                CLIENT_ID, receiver.url, ["job.failed"]
            )
            jobs = [ended_job() for _ in range(30)]
            for job in jobs:
                await services.webhook_notifier.job_ended(job)
        with log_file.open("ab") as output:
            process = start_medevents("webhooks", wh, tmp_path / "data", output, **env)
        await wait_until(lambda: len(receiver.requests) >= 5, timeout=30, what="some delivered")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_at = len(receiver.requests)
        assert killed_at < len(jobs), "all delivered before the kill: nothing was tested"
        await asyncio.sleep(0.5)
        with log_file.open("ab") as output:
            process = start_medevents("webhooks", wh, tmp_path / "data", output, **env)
        expected = {job["_id"] for job in jobs}

        def delivered() -> set[str]:
            import orjson

            return {orjson.loads(r["body"])["data"]["id"] for r in receiver.requests}

        await wait_until(lambda: delivered() >= expected, timeout=60, what="every event")

        # Every event's delivery is recorded (an attempt the kill cut short may be twice).
        async def recorded() -> bool:
            found = await db["webhook_deliveries"].find({"endpoint_id": endpoint["_id"]}).to_list()
            return {r["job_id"] for r in found if r["status"] == "delivered"} >= expected

        await wait_until(recorded, timeout=10, what="every delivery recorded")
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        await receiver.stop()

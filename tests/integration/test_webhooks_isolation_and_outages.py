"""Webhooks under load and faults, against the real broker and database: one client's hanging
endpoint (more messages than the prefetch) delays no other client's webhook (the per-endpoint
cap); stalled DNS bounds registration and delivery and leaves the event loop's executor free;
a MongoDB outage longer than the queue's delivery limit dead-letters nothing; the dead-letter
replay checks the broker's confirmation and goes past a foreign message; the address rules'
extra ranges; concurrent secret rotations, concurrent registrations at the endpoint limit,
and the deliveries' cursor across equal `seq`s."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import aio_pika
import aiormq
import pytest

from consumers.processors import builtin_registry
from service.api.app import create_app
from service.bootstrap import Services
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus, new_job_id
from service.messaging.broker import BrokerUnavailable
from service.messaging.webhooks import DEAD, WebhookMessage
from service.storage.embedded import EmbeddedMongo, free_port
from service.storage.mongo import StoreUnavailable
from service.storage.webhooks import MAX_ENDPOINTS_PER_CLIENT, WebhookStore
from service.usecases import webhooks as usecases
from service.usecases.webhooks import (
    TooManyEndpoints,
    UrlRefused,
    address_refusal,
    check_url,
    signing_secrets,
    webhook_id_of,
)
from service.webhooks_delivery import HttpSender
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, bearer
from tests.integration.webhook_harness import (
    Receiver,
    running,
    wait_until,
    webhook_settings,
)

HOOKS = bearer(CLIENT_ID, ("webhook:write",))


@pytest.fixture
async def services(settings, db):
    """What the bootstrap builds, with the webhook tests' settings (http allowed)."""
    async with Services(webhook_settings(settings), builtin_registry()) as built:
        await built.prepare_storage()
        yield built


def ended_job(client_id: str = CLIENT_ID) -> dict:
    now = utcnow()
    return {
        "_id": new_job_id(),
        "type": "encounter_package.create",
        "client_id": client_id,
        "status": int(JobStatus.FAILED),
        "status_code": 404,
        "error": {"type": "not_found", "message": "Patient not found"},
        "eta": now,
        "updated_at": now,
    }


# --- 1. one client's slow endpoint ---


async def test_more_hanging_webhooks_than_the_prefetch_delay_no_other_client(settings, db):
    """12 events for an endpoint that never answers, 4 prefetch slots, at most 2 attempts per
    endpoint at once: another client's webhook is delivered at once, not after the 8 s
    timeout (before the cap, the hanging endpoint held every slot)."""
    wh = webhook_settings(
        settings,
        webhook_timeout_seconds=8,
        webhook_prefetch=4,
        webhook_max_in_flight_per_endpoint=2,
    )
    hanging = await Receiver(["hang"]).start()
    fast = await Receiver([200]).start()
    try:
        async with running(wh, consumer=False) as services:
            await services.webhook_service.create(CLIENT_ID, hanging.url, ["job.failed"])
            await services.webhook_service.create(OTHER_CLIENT_ID, fast.url, ["job.failed"])
            for _ in range(12):
                await services.webhook_notifier.job_ended(ended_job(CLIENT_ID))
            await wait_until(lambda: len(hanging.requests) >= 2, what="hanging attempts")
            await asyncio.sleep(0.5)  # every slot taken, had nothing capped them
            started = time.monotonic()
            theirs = ended_job(OTHER_CLIENT_ID)
            await services.webhook_notifier.job_ended(theirs)
            await wait_until(lambda: fast.requests, timeout=6, what="the other client's webhook")
            assert time.monotonic() - started < 3
            # The hanging endpoint never had more than its cap at once.
            assert len(hanging.requests) == 2
            await hanging.stop()  # releases the hanging attempts
    finally:
        await hanging.stop()
        await fast.stop()


# --- 2. DNS ---


@pytest.fixture
def stalled_dns(monkeypatch):
    """`socket.getaddrinfo` never answers for names under `stalled.example` (until the test
    ends): a DNS server that does not answer."""
    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith("stalled.example"):
            released.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "stalled")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(usecases, "DNS_TIMEOUT_SECONDS", 0.5)
    yield
    released.set()


async def test_registration_gives_up_on_a_stalled_name(stalled_dns):
    started = time.monotonic()
    with pytest.raises(UrlRefused, match="did not resolve within"):
        async with asyncio.timeout(5):
            await check_url("https://hooks.stalled.example/hook", allow_insecure=False)
    assert time.monotonic() - started < 2


async def test_stalled_dns_bounds_deliveries_and_leaves_the_loops_executor_free(stalled_dns):
    """More stalled lookups than any shared pool has threads: each delivery fails within the
    DNS timeout, and the loop's own executor (getaddrinfo of anything else, files, ...) still
    answers at once."""
    sender = HttpSender(5, allow_insecure=False)
    loop = asyncio.get_running_loop()
    try:
        started = time.monotonic()
        sends = [
            asyncio.create_task(sender.send(f"https://h{i}.stalled.example/hook", {}, b"{}"))
            for i in range(40)  # more than any shared pool's threads (32 at most)
        ]
        await asyncio.sleep(0.1)
        async with asyncio.timeout(1):
            assert await loop.run_in_executor(None, lambda: 42) == 42
            assert await loop.getaddrinfo("localhost", 80)
        results = await asyncio.wait_for(asyncio.gather(*sends), timeout=4)
        assert time.monotonic() - started < 3
        assert all(not r.ok and not r.permanent for r in results), results
        assert {r.error for r in results} == {"dns_error"}
    finally:
        await sender.close()


# --- 3. a MongoDB outage ---


@pytest.mark.faults
@pytest.mark.timeout(120)
async def test_a_mongodb_outage_past_the_delivery_limit_dead_letters_nothing(
    settings, tmp_path, monkeypatch
):
    """MongoDB down for more than 20 attempts to read the endpoint (the queue's delivery limit):
    the message is kept and retried in place, then delivered once MongoDB is back; no dead
    letter (before: each try was a requeue, counted, and the 21st dead-lettered it)."""
    monkeypatch.setattr("service.webhooks_delivery.OUTAGE_BACKOFF_SECONDS", 0.02)
    monkeypatch.setattr("service.webhooks_delivery.OUTAGE_BACKOFF_MAX_SECONDS", 0.05)
    failed_reads = 0
    real_get = WebhookStore.get

    async def counting_get(self, endpoint_id):
        nonlocal failed_reads
        try:
            return await real_get(self, endpoint_id)
        except StoreUnavailable:
            failed_reads += 1
            raise

    monkeypatch.setattr(WebhookStore, "get", counting_get)
    server = EmbeddedMongo(tmp_path / "own-mongo", port=free_port())
    url = server.start()
    receiver = await Receiver([200]).start()
    try:
        wh = webhook_settings(settings, mongodb_url=url, mongodb_timeout_ms=200)
        async with running(wh, consumer=False) as services:
            endpoint = await services.webhook_service.create(
                CLIENT_ID, receiver.url, ["job.failed"]
            )
            server.stop()
            job_id = new_job_id()
            await services.webhook_broker_for_delivery.publish(
                WebhookMessage(
                    webhook_id_of(job_id, endpoint["_id"]),
                    endpoint["_id"],
                    CLIENT_ID,
                    job_id,
                    "job.failed",
                    1,
                    b'{"type":"job.failed"}',
                )
            )
            await wait_until(lambda: failed_reads >= 25, timeout=60, what="25 failed reads")
            server.start()
            await wait_until(lambda: receiver.requests, timeout=30, what="the delivery")
            assert await services.webhook_dead_letters.count() == 0
    finally:
        server.stop()
        await receiver.stop()


# --- 4. the dead-letter replay ---


async def _publish_foreign_dead_letter(settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{settings.amqp_prefix}medical_events.webhooks")
        await exchange.publish(aio_pika.Message(b"not a webhook"), routing_key=DEAD)


def _dead(job_id: str | None = None) -> WebhookMessage:
    job_id = job_id or new_job_id()
    return WebhookMessage(
        webhook_id_of(job_id, "e"), "e", CLIENT_ID, job_id, "job.failed", 6, b"{}"
    )


async def _delivery_queue_depth(settings) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"{settings.amqp_prefix}medical_events.webhooks", passive=True
        )
        return queue.declaration_result.message_count or 0


async def test_the_replay_goes_past_a_foreign_message(settings, services):
    broker = services.webhook_broker_for_delivery
    await broker.set_aside(_dead())
    await _publish_foreign_dead_letter(settings)
    await broker.set_aside(_dead())
    dead_letters = services.webhook_dead_letters
    assert await dead_letters.count() == 3
    assert await dead_letters.replay() == 2
    assert await dead_letters.count() == 1  # the foreign one, left for a person
    assert await wait_until(lambda: _delivery_queue_depth(settings), what="replayed") == 2
    assert await dead_letters.replay() == 0  # and again: it blocks nothing
    assert await dead_letters.count() == 1


async def test_a_replayed_copy_the_broker_does_not_confirm_stays_a_dead_letter(
    settings, services, monkeypatch
):
    await services.webhook_broker_for_delivery.set_aside(_dead())
    dead_letters = services.webhook_dead_letters
    assert await dead_letters.count() == 1

    async def refused(self, message, routing_key, **kwargs):
        return aiormq.spec.Basic.Nack(delivery_tag=1)

    monkeypatch.setattr(aio_pika.exchange.Exchange, "publish", refused)
    with pytest.raises(BrokerUnavailable):
        await dead_letters.replay()
    monkeypatch.undo()
    assert await dead_letters.count() == 1, "the dead letter was acked though its copy was lost"


# --- 5. the address rules, rotations, the endpoint limit, the cursor ---


@pytest.mark.parametrize(
    "address",
    [
        *("fec0::1", "fec0:1::abcd", "2002:7f00:1::1", "2002:a00:1::1", "2002:5db8:d822::1"),
        *("192.0.0.8", "192.0.0.9", "192.0.0.170", "::ffff:192.0.0.9"),
    ],
)
async def test_site_local_6to4_and_ietf_protocol_addresses_are_refused(address):
    assert address_refusal(address) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UrlRefused):
        await check_url(f"https://{host}/hook", allow_insecure=False)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_still_pass(address):
    assert address_refusal(address) is None


async def test_concurrent_rotations_keep_both_new_secrets_signing(services, monkeypatch):
    service = services.webhook_service
    endpoint = await service.create(CLIENT_ID, "http://127.0.0.1:9/hook", ["job.failed"])
    store = services.webhook_store
    real_read = store.get_for_client

    async def slow_read(endpoint_id, client_id):
        found = await real_read(endpoint_id, client_id)
        await asyncio.sleep(0.1)  # both rotations read before either writes
        return found

    monkeypatch.setattr(store, "get_for_client", slow_read)
    first, second = await asyncio.gather(
        service.rotate_secret(endpoint["_id"], CLIENT_ID),
        service.rotate_secret(endpoint["_id"], CLIENT_ID),
    )
    stored = await store.get(endpoint["_id"])
    signing = signing_secrets(stored, time.time())
    assert first["secret"] in signing and second["secret"] in signing, "a secret shown is lost"
    assert endpoint["secret"] not in signing  # two rotations: the first secret is gone


async def test_concurrent_registrations_stop_at_the_limit(services):
    async def register() -> bool:
        try:
            await services.webhook_service.create(
                CLIENT_ID, "http://127.0.0.1:9/hook", ["job.failed"]
            )
        except TooManyEndpoints:
            return False
        return True

    created = await asyncio.gather(*(register() for _ in range(MAX_ENDPOINTS_PER_CLIENT + 8)))
    assert sum(created) == MAX_ENDPOINTS_PER_CLIENT
    assert await services.webhook_store.count_for_client(CLIENT_ID) == MAX_ENDPOINTS_PER_CLIENT
    endpoint = (await services.webhook_service.list(CLIENT_ID))[0]
    await services.webhook_service.delete(endpoint["_id"], CLIENT_ID)
    assert await register()  # a deleted endpoint's place is free again


async def test_the_deliveries_cursor_skips_no_attempt_of_an_equal_seq(aiohttp_client, settings, db):
    """Two webhook processes may record attempts with the same `seq`; paging one at a time
    still lists each exactly once."""
    services = Services(webhook_settings(settings), builtin_registry())
    api = await aiohttp_client(create_app(services))
    await services.prepare_storage()
    endpoint = await services.webhook_service.create(
        CLIENT_ID, "https://93.184.216.34/hook", ["job.failed"]
    )
    seq = time.time_ns()
    attempts = [
        {
            "_id": f"{i:032x}",
            "seq": seq if i < 4 else seq - 1,
            "endpoint_id": endpoint["_id"],
            "client_id": CLIENT_ID,
            "webhook_id": "msg_x",
            "event_type": "job.failed",
            "job_id": f"job{i}",
            "attempt": 1,
            "status": "delivered",
            "duration_ms": 1.0,
            "response_status": 200,
            "error": None,
            "at": utcnow(),
        }
        for i in range(6)
    ]
    await db["webhook_deliveries"].insert_many(attempts)
    seen: list[str] = []
    query = "?limit=1"
    for _ in range(10):
        response = await api.get(
            f"/api/webhooks/{endpoint['_id']}/deliveries{query}", headers=HOOKS
        )
        body = await response.json()
        assert response.status == 200, body
        seen += [a["id"] for a in body["data"]]
        token = body["paging"]["next_page_token"]
        if token is None:
            break
        query = f"?limit=1&page_token={token}"
    assert seen == [f"{i:032x}" for i in (3, 2, 1, 0, 5, 4)]

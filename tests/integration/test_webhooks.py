"""Signed webhooks against the real broker and database: a job's end delivered to a local
receiver after two failed attempts, signed as the Standard Webhooks specification says
(verified by `verify_standard_webhook`, written from the specification), every attempt
listed; the dead letter once the schedule is exhausted, replayed by the operators' endpoint;
the registration API (scopes, isolation between clients, the secret shown once, rotation with
both secrets signing, delete); a reconciled job's job.failed; a hanging endpoint that delays
neither job processing nor another client's deliveries."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
from service.api.app import create_app
from service.bootstrap import Services
from service.domain.jobs import new_job_id
from service.messaging.broker import Topology
from service.messaging.job_queue import JobQueue
from service.storage.entities import EntityStore
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, bearer, new_job
from tests.harness import example, submission_with, wait_for_jobs
from tests.integration.conftest import make_processor
from tests.integration.webhook_harness import (
    Receiver,
    running,
    verify_standard_webhook,
    wait_until,
    webhook_settings,
)

HOOKS = bearer(CLIENT_ID, ("webhook:write", "job:read"))
OTHER_HOOKS = bearer(OTHER_CLIENT_ID, ("webhook:write", "job:read"))
ADMIN = bearer("ops", ("jobs:admin",))


@pytest.fixture
def wh_settings(settings):
    return webhook_settings(settings)


@pytest.fixture
async def wh_api(aiohttp_client, wh_settings, db):
    return await aiohttp_client(create_app(Services(wh_settings, builtin_registry())))


@pytest.fixture
async def receiver():
    started = await Receiver().start()
    yield started
    await started.stop()


async def register(api, url: str, events=("job.processed", "job.failed"), headers=HOOKS):
    response = await api.post(
        "/api/webhooks", json={"url": url, "events": list(events)}, headers=headers
    )
    body = await response.json()
    assert response.status == 201, body
    return body["data"]


async def deliveries(api, endpoint_id: str, query: str = "", headers=HOOKS) -> dict:
    response = await api.get(f"/api/webhooks/{endpoint_id}/deliveries{query}", headers=headers)
    body = await response.json()
    assert response.status == 200, body
    return body


async def test_delivered_after_a_500_and_a_timeout_signed_and_listed(
    wh_api, wh_settings, receiver, publisher, patients, db
):
    receiver.behaviours = [500, "hang", 200]
    endpoint = await register(wh_api, receiver.url)
    assert endpoint["secret"].startswith("whsec_")
    async with running(wh_settings):
        job_id = new_job_id()
        await publisher.publish(example("failed_404_unknown_patient"), job_id, request_id=None)
        await wait_until(lambda: len(receiver.requests) >= 3, what="three attempts")
        first, second, third = receiver.requests[:3]
        # One event, three attempts: the same webhook-id; each attempt signed anew.
        assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
        assert third["headers"]["webhook-id"] == first["headers"]["webhook-id"]
        for attempt in (first, second, third):
            assert verify_standard_webhook(endpoint["secret"], attempt["headers"], attempt["body"])
        assert not verify_standard_webhook("whsec_" + "A" * 44, third["headers"], third["body"]), (
            "a signature that any secret verifies"
        )
        # Not one byte of the body may change under the signature.
        assert not verify_standard_webhook(
            endpoint["secret"], third["headers"], third["body"].replace(b"404", b"405")
        )
        event = orjson.loads(third["body"])
        assert event["type"] == "job.failed"
        assert event["timestamp"].endswith("Z")
        polled = await (await wh_api.get(f"/api/jobs/{job_id}", headers=HOOKS)).json()
        assert event["data"] == {"id": job_id, "type": "encounter_package.create", **polled["data"]}
        assert event["data"]["status_code"] == "404"
        # Retried after the schedule's first step (0.2 s +-20%), then its second (0.4 s).
        assert second["at"] - first["at"] >= 0.15
        assert third["at"] - second["at"] >= 1.0 + 0.3  # the 1 s timeout, then 0.4 s +-20%

        page = await wait_until(
            lambda: _listed(wh_api, endpoint["id"], 3), what="three attempts listed"
        )
    newest, middle, oldest = page["data"]
    assert [a["attempt"] for a in page["data"]] == [3, 2, 1]
    assert [a["status"] for a in page["data"]] == ["delivered", "retrying", "retrying"]
    assert (newest["response_status"], newest["error"]) == (200, None)
    assert middle["error"] == "timeout" and middle["response_status"] is None
    assert middle["duration_ms"] >= 900
    assert (oldest["response_status"], oldest["error"]) == (500, "http_500")
    assert {a["job_id"] for a in page["data"]} == {job_id}
    assert {a["webhook_id"] for a in page["data"]} == {first["headers"]["webhook-id"]}
    assert {a["event_type"] for a in page["data"]} == {"job.failed"}
    # Paged: two, then the last one.
    first_page = await deliveries(wh_api, endpoint["id"], "?limit=2")
    assert [a["attempt"] for a in first_page["data"]] == [3, 2]
    token = first_page["paging"]["next_page_token"]
    rest = await deliveries(wh_api, endpoint["id"], f"?limit=2&page_token={token}")
    assert [a["attempt"] for a in rest["data"]] == [1]
    assert rest["paging"]["next_page_token"] is None
    bad = await wh_api.get(f"/api/webhooks/{endpoint['id']}/deliveries?limit=0", headers=HOOKS)
    assert bad.status == 422
    assert "$.limit" in str(await bad.json())


async def _listed(api, endpoint_id: str, count: int) -> dict | None:
    page = await deliveries(api, endpoint_id)
    return page if len(page["data"]) >= count else None


async def test_dead_letter_after_the_schedule_then_replayed(
    wh_api, wh_settings, receiver, publisher, patients
):
    receiver.behaviours = [503]
    endpoint = await register(wh_api, receiver.url, events=["job.failed"])
    async with running(wh_settings):
        await publisher.publish(example("failed_404_unknown_patient"), new_job_id(), None)
        # 1 + 2 retries (the schedule 0.2,0.4), then set aside.
        page = await wait_until(lambda: _listed(wh_api, endpoint["id"], 3), what="3 attempts")
        assert [a["status"] for a in page["data"]] == ["dead", "retrying", "retrying"]

        async def dead_letters() -> int:
            response = await wh_api.get("/api/admin/webhooks/dead-letters", headers=ADMIN)
            assert response.status == 200
            return (await response.json())["data"]["dead_letters"]

        assert await wait_until(dead_letters, what="one webhook dead letter") == 1
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 3, "no attempt past the schedule"
        forbidden = await wh_api.post("/api/admin/webhooks/dead-letters/replay", headers=HOOKS)
        assert forbidden.status == 403

        receiver.behaviours = [200]  # the endpoint is fixed; the operator replays
        response = await wh_api.post(
            "/api/admin/webhooks/dead-letters/replay", json={}, headers=ADMIN
        )
        assert response.status == 200
        assert (await response.json())["data"] == {"replayed": 1, "dead_letters": 0}
        await wait_until(lambda: len(receiver.requests) == 4, what="the replayed delivery")
        replayed = receiver.requests[3]
        assert replayed["headers"]["webhook-id"] == receiver.requests[0]["headers"]["webhook-id"]
        assert verify_standard_webhook(endpoint["secret"], replayed["headers"], replayed["body"])
        page = await wait_until(lambda: _listed(wh_api, endpoint["id"], 4), what="listed")
        assert (page["data"][0]["status"], page["data"][0]["attempt"]) == ("delivered", 1)
    assert await dead_letters() == 0


async def test_the_dashboard_shows_and_replays_webhook_dead_letters(wh_api):
    page = await wh_api.get("/dashboard")
    html = await page.text()
    assert 'data-testid="webhook-dead-letters"' in html
    assert 'data-testid="webhook-replay"' in html
    script = await (await wh_api.get("/dashboard/dashboard.js")).text()
    assert "/api/admin/webhooks/dead-letters/replay" in script


async def test_registration_api_scopes_isolation_secret_rotation_delete(
    wh_api, wh_settings, receiver, publisher, patients
):
    # Scope webhook:write.
    response = await wh_api.post(
        "/api/webhooks",
        json={"url": receiver.url, "events": ["job.failed"]},
        headers=bearer(CLIENT_ID, ("job:read",)),
    )
    assert response.status == 403
    assert (await wh_api.get("/api/webhooks")).status == 401
    # Bad requests: 422 naming the field, in the error envelope.
    for body, field in (
        ({"url": receiver.url, "events": ["job.started"]}, "$.events"),
        ({"url": receiver.url, "events": []}, "$.events"),
        ({"events": ["job.failed"]}, "$.url"),
        ({"url": "ftp://example.com/x", "events": ["job.failed"]}, "$.url"),
    ):
        response = await wh_api.post("/api/webhooks", json=body, headers=HOOKS)
        answer = await response.json()
        assert response.status == 422, answer
        assert answer["error"]["type"] == "validation_failed"
        assert any(e["entry"].startswith(field) for e in answer["error"]["invalid"]), answer

    mine = await register(wh_api, receiver.url, events=["job.failed"])
    theirs = await register(wh_api, receiver.url + "?b", headers=OTHER_HOOKS)
    assert mine["events"] == ["job.failed"]
    # The secret is shown at creation only.
    read = await (await wh_api.get(f"/api/webhooks/{mine['id']}", headers=HOOKS)).json()
    assert "secret" not in read["data"]
    assert read["data"]["url"] == receiver.url
    listed = await (await wh_api.get("/api/webhooks", headers=HOOKS)).json()
    assert [e["id"] for e in listed["data"]] == [mine["id"]]
    assert "whsec_" not in orjson.dumps(listed).decode()
    # Another client's endpoint does not exist for this one.
    for method, path in (
        ("GET", f"/api/webhooks/{theirs['id']}"),
        ("DELETE", f"/api/webhooks/{theirs['id']}"),
        ("POST", f"/api/webhooks/{theirs['id']}/actions/rotate-secret"),
        ("GET", f"/api/webhooks/{theirs['id']}/deliveries"),
        ("GET", "/api/webhooks/not-a-uuid"),
    ):
        response = await wh_api.request(method, path, headers=HOOKS)
        assert response.status == 404, (method, path)
        assert (await response.json())["error"]["type"] == "not_found"

    # Rotation: a new secret, shown once; both sign during the overlap.
    response = await wh_api.post(f"/api/webhooks/{mine['id']}/actions/rotate-secret", headers=HOOKS)
    rotated = (await response.json())["data"]
    assert response.status == 200
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != mine["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    async with running(wh_settings):
        await publisher.publish(example("failed_404_unknown_patient"), new_job_id(), None)
        await wait_until(lambda: receiver.requests, what="a delivery")
    delivered = receiver.requests[0]
    assert len(delivered["headers"]["webhook-signature"].split(" ")) == 2
    assert verify_standard_webhook(rotated["secret"], delivered["headers"], delivered["body"])
    assert verify_standard_webhook(mine["secret"], delivered["headers"], delivered["body"])
    # Only my endpoint got it: the other client's job events are its own.
    assert len(receiver.requests) == 1

    assert (await wh_api.delete(f"/api/webhooks/{mine['id']}", headers=HOOKS)).status == 204
    assert (await wh_api.get(f"/api/webhooks/{mine['id']}", headers=HOOKS)).status == 404
    assert (await wh_api.delete(f"/api/webhooks/{mine['id']}", headers=HOOKS)).status == 404
    other = await wh_api.get(f"/api/webhooks/{theirs['id']}", headers=OTHER_HOOKS)
    assert other.status == 200


async def test_a_reconciled_job_sends_job_failed(wh_api, wh_settings, receiver, store):
    endpoint = await register(wh_api, receiver.url, events=["job.failed"])
    job = new_job()
    await store.create_pending(job)
    async with running(wh_settings, consumer=False) as services:
        assert await services.reconciler.set_aside(job.job_id)
        await wait_until(lambda: receiver.requests, what="the reconciled job's webhook")
    event = orjson.loads(receiver.requests[0]["body"])
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job.job_id
    assert event["data"]["status"] == "failed_with_error"
    assert event["data"]["status_code"] == "500"
    assert verify_standard_webhook(
        endpoint["secret"], receiver.requests[0]["headers"], receiver.requests[0]["body"]
    )


async def test_a_hanging_endpoint_delays_neither_jobs_nor_other_clients(
    aiohttp_client, settings, db, publisher, patients
):
    slow_settings = webhook_settings(settings, webhook_timeout_seconds=8, webhook_prefetch=8)
    api = await aiohttp_client(create_app(Services(slow_settings, builtin_registry())))
    hanging = await Receiver(["hang"]).start()
    fast = await Receiver([200]).start()
    try:
        await register(api, hanging.url)
        await register(api, fast.url, headers=OTHER_HOOKS)
        async with running(slow_settings):
            started = time.monotonic()
            mine = [new_job_id() for _ in range(6)]
            for job_id in mine:
                await publisher.publish(example("failed_404_unknown_patient"), job_id, None)
            await wait_until(lambda: len(hanging.requests) >= 3, what="hanging deliveries")
            theirs = new_job_id()
            submission = example("failed_404_unknown_patient")
            requested_by = {**submission["requested_by"], "client_id": OTHER_CLIENT_ID}
            await publisher.publish(
                submission_with(submission, requested_by=requested_by), theirs, None
            )
            await wait_for_jobs(db, [*mine, theirs], timeout=5)
            # Every job ended long before one hanging attempt times out (8 s).
            assert time.monotonic() - started < 6
            await wait_until(lambda: fast.requests, timeout=5, what="the other client's")
            assert time.monotonic() - started < 7
            assert orjson.loads(fast.requests[0]["body"])["data"]["id"] == theirs
    finally:
        await hanging.stop()
        await fast.stop()


async def test_a_cancelled_job_sends_job_failed_with_499(wh_api, wh_settings, receiver, store):
    """The client's cancel ends the job in the API process: its webhook goes out all the same
    (`JobService.on_job_ended`), signed, with the cancel's rendering."""
    endpoint = await register(wh_api, receiver.url, events=["job.failed"])
    job = new_job()
    await store.create_pending(job)
    cancel_headers = bearer(CLIENT_ID, ("job:read", "encounter:write"))
    async with running(wh_settings, consumer=False):
        response = await wh_api.post(
            f"/api/jobs/{job.job_id}/actions/cancel", headers=cancel_headers
        )
        assert response.status == 200, await response.text()
        await wait_until(lambda: receiver.requests, what="the cancelled job's webhook")
    event = orjson.loads(receiver.requests[0]["body"])
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job.job_id
    assert (event["data"]["status"], event["data"]["status_code"]) == ("failed", "499")
    assert event["data"]["error"]["type"] == "cancelled"
    assert verify_standard_webhook(
        endpoint["secret"], receiver.requests[0]["headers"], receiver.requests[0]["body"]
    )


async def test_a_job_whose_webhooks_could_not_be_published_is_notified_on_redelivery(
    settings, db, patients, raw_publisher
):
    """At least once: when the webhooks of an ended job cannot be published, its message is
    not acked; the redelivery finds the job ended and publishes them, and the job is processed
    once."""

    class FailingOnce:
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []

        async def job_ended(self, job: dict) -> None:
            self.calls.append((job["_id"], job["status"]))
            if len(self.calls) == 1:
                raise ConnectionError("the broker did not confirm")

    await EntityStore(db).ensure_indexes()
    notifier = FailingOnce()
    consumer = JobConsumer(
        JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8),
        make_processor(db),
        notifier=notifier,  # type: ignore[arg-type]
    )
    await consumer.start()
    try:
        job_id = new_job_id()
        await raw_publisher.publish(example("encounter_package"), message_id=job_id)
        await wait_until(lambda: len(notifier.calls) >= 2, what="the second notification")
    finally:
        await consumer.stop(drain_seconds=5)
    assert [call[0] for call in notifier.calls] == [job_id, job_id]
    job = await db["jobs"].find_one({"_id": job_id})
    assert job["attempts"] == 1
    assert (await raw_publisher.queue.declare()).message_count == 0


async def test_a_cancelled_job_is_notified_once_though_its_message_comes_later(
    wh_api, wh_settings, receiver, db, patients
):
    """The cancel publishes `job.failed`; the job's message, still queued, reaches a consumer
    afterwards, finds the job ended and published, and publishes nothing more."""
    await register(wh_api, receiver.url, events=["job.failed", "job.processed"])
    headers = bearer(CLIENT_ID, ("job:read", "encounter:write"))
    submission = example("encounter_package")
    response = await wh_api.post(
        f"/api/patients/{submission['patient_id']}/encounter_package",
        json=submission["data"],
        headers=headers,
    )
    assert response.status == 202, await response.text()
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    async with running(wh_settings, consumer=False):
        cancelled = await wh_api.post(f"/api/jobs/{job_id}/actions/cancel", headers=headers)
        assert cancelled.status == 200
        await wait_until(lambda: receiver.requests, what="the cancel's webhook")
    assert (await db["jobs"].find_one({"_id": job_id}))["notified"]  # 1 on the test server
    async with running(wh_settings, consumer=True) as services:  # the queued message now
        await wait_until(
            lambda: _queue_empty(services), what="the job's message consumed", timeout=10
        )
        await asyncio.sleep(1.5)  # a second webhook, had one been published, would be here
    assert len(receiver.requests) == 1
    assert await db["encounters"].count_documents({}) == 0


async def _queue_empty(services) -> bool:
    return await services.job_queue.depth() == 0

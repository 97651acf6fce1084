"""A burst of webhooks for one prompt endpoint, against the real broker and database: the
messages past its cap (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT) wait a moment for its slots instead
of a delay queue's 5 s, the cap still holds at the receiver; a hanging endpoint's messages
still go to the delay queue (nothing waits for an endpoint whose attempts are old)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from service.config import Settings
from service.domain.clock import utcnow
from service.domain.jobs import JobStatus, new_job_id
from tests.conftest import CLIENT_ID
from tests.integration.webhook_harness import Receiver, running, wait_until, webhook_settings


def ended_job() -> dict:
    now = utcnow()
    return {
        "_id": new_job_id(),
        "type": "encounter_package.create",
        "client_id": CLIENT_ID,
        "status": int(JobStatus.FAILED),
        "status_code": 404,
        "error": {"type": "not_found", "message": "Patient not found"},
        "eta": now,
        "updated_at": now,
    }


class CountingReceiver:
    """Answers 204 after `delay`; the most requests it had in progress at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_progress = 0
        self.most = 0
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.in_progress += 1
        self.most = max(self.most, self.in_progress)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_progress -= 1
        self.received += 1
        return web.Response(status=204)

    async def start(self) -> CountingReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.timeout(60)
async def test_a_burst_to_a_prompt_endpoint_waits_for_its_slots_not_the_delay_queue(
    settings, captured_logs
):
    # The default schedule: a deferred message would come back after 5 s (+-20%).
    wh = webhook_settings(
        settings,
        webhook_retry_schedule=Settings().webhook_retry_schedule,
        webhook_prefetch=16,
        webhook_max_in_flight_per_endpoint=2,
    )
    receiver = await CountingReceiver(delay=0.02).start()
    try:
        async with running(wh, consumer=False) as services:
            await services.webhook_service.create(CLIENT_ID, receiver.url, ["job.failed"])
            started = time.monotonic()
            for _ in range(4):  # 4 bursts of 4 events: twice the cap at once
                await asyncio.gather(
                    *(services.webhook_notifier.job_ended(ended_job()) for _ in range(4))
                )
                await asyncio.sleep(0.15)
            await wait_until(lambda: receiver.received >= 16, timeout=4, what="every event")
            assert time.monotonic() - started < 3  # none waited in the 5 s delay queue
            assert receiver.most == 2  # the cap holds: two at once, never more
            assert captured_logs.events("webhook_deferred") == []
    finally:
        await receiver.stop()


@pytest.mark.timeout(60)
async def test_a_hanging_endpoints_messages_go_to_ever_longer_delay_queues(
    settings, db, captured_logs
):
    """Nothing waits for the slots of an endpoint whose attempts are old: its messages go to
    a delay queue, the first step's while they are young, then (its attempts still in
    flight) the step of the times each was deferred since: 0.2 s, then 0.4 s, not 0.2 s
    forever."""
    wh = webhook_settings(
        settings,
        webhook_timeout_seconds=8,
        webhook_prefetch=8,
        webhook_max_in_flight_per_endpoint=2,
        webhook_retry_schedule=(0.2, 0.4),
    )
    hanging = await Receiver(["hang"]).start()
    try:
        async with running(wh, consumer=False) as services:
            endpoint = await services.webhook_service.create(CLIENT_ID, hanging.url, ["job.failed"])
            for _ in range(6):
                await services.webhook_notifier.job_ended(ended_job())
            await wait_until(lambda: len(hanging.requests) >= 2, what="two hanging attempts")
            await asyncio.sleep(2.5)
            # Two attempts at once, never more; the four others deferred, again and again,
            # none recorded as an attempt.
            assert len(hanging.requests) == 2
            deferred = captured_logs.events("webhook_deferred")
            assert {d["endpoint_id"] for d in deferred} == {endpoint["_id"]}
            by_message: dict[str, list] = {}
            for d in deferred:
                by_message.setdefault(d["webhook_id"], []).append(d)
            assert len(by_message) == 4
            for each in by_message.values():
                # Counted only once the endpoint's attempts are old: 0, ..., 0, 1, 2, 3, ...
                counts = [d["deferrals"] for d in each]
                young = counts.count(0)
                assert counts == [0] * young + list(range(1, len(counts) - young + 1))
                waits = [d["wait_s"] for d in each]
                # 0.2 s while the attempts in flight are young (the first 0.5 s), and for the
                # first deferral once they are old; then 0.4 s.
                assert waits[0] == 0.2 and waits[-1] == 0.4
                assert waits == sorted(waits) and set(waits) == {0.2, 0.4}
                assert len(each) >= 3
            assert await db["webhook_deliveries"].count_documents({}) == 0
    finally:
        await hanging.stop()

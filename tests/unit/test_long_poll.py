"""Long poll, without the network: how long a request asks to wait, and job-finished events
that a blocked broker cannot hold up."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import make_mocked_request

from service.api.views.jobs import long_poll_seconds


@pytest.mark.parametrize(
    ("query", "prefer", "expected"),
    [
        ("", "", (0.0, False)),
        ("?wait=5", "", (5.0, False)),
        ("?wait=90", "", (30.0, False)),
        ("?wait=-1", "", (0.0, False)),
        ("?wait=nan", "", (0.0, False)),
        ("?wait=abc", "", (0.0, False)),
        ("", "respond-async, wait=10", (10.0, True)),
        ("", "WAIT=3", (3.0, True)),
        ("", "wait=1e9", (30.0, True)),
        ("?wait=2", "wait=10", (2.0, False)),
    ],
)
def test_how_long_to_wait(query, prefer, expected):
    headers = {"Prefer": prefer} if prefer else {}
    request = make_mocked_request("GET", f"/api/jobs/x{query}", headers=headers)
    assert long_poll_seconds(request) == expected


async def test_a_blocked_broker_does_not_hold_the_consumer_stop(monkeypatch):
    """A publish that never returns (a broker blocking publishers) ends at the timeout; ids
    added after the stop are dropped, not sent on a closed channel."""
    from service.messaging import job_events

    class BlockedExchange:
        published = 0

        async def publish(self, message, routing_key, **kwargs):
            BlockedExchange.published += 1
            await asyncio.Event().wait()

    monkeypatch.setattr(job_events, "PUBLISH_TIMEOUT_SECONDS", 0.2)
    finished = job_events.FinishedEvents(BlockedExchange())
    finished.add("job-1")
    started = time.monotonic()
    await finished.close()
    assert time.monotonic() - started < 1.0
    finished.add("job-2")
    await asyncio.sleep(0.05)
    assert BlockedExchange.published == 1

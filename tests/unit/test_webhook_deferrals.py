"""A webhook message's deferrals (its endpoint at its cap): counted in its headers, reset by a
new attempt or a replay, and the delay queue each goes to (the first step's for a prompt
endpoint; for a stuck one, the step of the times it was deferred, the last one at most)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.messaging.webhooks import WebhookMessage
from service.usecases.webhooks import WebhookDeliveries


def _message(**changes) -> WebhookMessage:
    values = {
        "webhook_id": "msg_x",
        "endpoint_id": "e",
        "client_id": "c",
        "job_id": "j",
        "event_type": "job.failed",
        "attempt": 2,
        "body": b"{}",
    }
    return WebhookMessage(**{**values, **changes})


def _incoming(headers: dict) -> SimpleNamespace:
    return SimpleNamespace(headers=headers, body=b"{}")


def test_deferrals_travel_in_the_headers_and_a_new_attempt_resets_them():
    once = _message().deferred()
    assert once.deferrals == 1
    assert once.headers()["x-deferrals"] == 1
    assert "x-deferrals" not in _message().headers()  # none: no header, as before
    assert WebhookMessage.of(_incoming(once.deferred().headers())).deferrals == 2
    assert WebhookMessage.of(_incoming(_message().headers())).deferrals == 0
    assert once.next_attempt().deferrals == 0 and once.next_attempt().attempt == 3
    assert once.first_attempt().deferrals == 0 and once.first_attempt().attempt == 1


@pytest.mark.parametrize("bad", [None, [1], {"a": 1}, "two"])
def test_a_deferral_count_that_is_not_a_number_is_not_our_message(bad):
    headers = {**_message().headers(), "x-deferrals": bad}
    assert WebhookMessage.of(_incoming(headers)) is None


class _Broker:
    def __init__(self) -> None:
        self.queued: list[tuple[WebhookMessage, float, int]] = []

    async def retry_later(self, webhook: WebhookMessage, step: float, wait_ms: int) -> None:
        self.queued.append((webhook, step, wait_ms))


@pytest.mark.parametrize(
    ("deferrals", "stuck", "step"),
    [
        (0, False, 5.0),
        (3, False, 5.0),
        (0, True, 5.0),
        (1, True, 30.0),
        (2, True, 300.0),
        (9, True, 7200.0),
    ],
)
async def test_the_delay_queue_of_a_deferral(deferrals, stuck, step):
    broker = _Broker()
    deliveries = WebhookDeliveries(None, broker, None, (5.0, 30.0, 300.0, 1800.0, 7200.0))  # type: ignore[arg-type]
    waited = await deliveries.defer(_message(deferrals=deferrals), stuck=stuck)
    assert waited == step
    ((queued, queued_step, wait_ms),) = broker.queued
    assert queued_step == step
    assert step * 800 <= wait_ms <= step * 1200  # +-20% jitter
    # The same attempt; a stuck endpoint's deferrals counted, a prompt one's started over.
    assert queued.deferrals == (deferrals + 1 if stuck else 0) and queued.attempt == 2


async def test_no_delay_queue_without_a_schedule():
    deliveries = WebhookDeliveries(None, _Broker(), None, ())  # type: ignore[arg-type]
    assert await deliveries.defer(_message(), stuck=True) is None

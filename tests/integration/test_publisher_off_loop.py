"""A publish is not queued behind a busy API loop: the publisher's connection runs on a loop
of its own thread (`service.messaging.loop_thread`), so its confirm waits for the broker, not
for the caller's loop to get through its backlog."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.domain.jobs import new_job_id
from service.messaging.broker import BrokerUnavailable, Topology
from service.messaging.publisher import SubmissionPublisher
from tests.harness import example

BUSY_TASKS = 20
WORK_SECONDS = 0.002  # per task and pass: a pass of the loop takes at least 40 ms


async def test_a_publish_takes_a_few_passes_of_a_busy_loop(publisher) -> None:
    """Counted in passes of the caller's loop, not in seconds (the machine may be slow): a
    publish on the caller's loop is a chain of steps that each wait a pass (the channel's lock,
    the writer, the reader that sees the confirm, the waiter); measured at 6-8. Here the
    caller's loop pays the hand-over and the wake-up."""
    await publisher.connect()
    passes = 0
    done = asyncio.Event()

    async def count_passes() -> None:
        nonlocal passes
        while not done.is_set():
            passes += 1
            await asyncio.sleep(0)

    async def busy() -> None:  # a poll the loop must answer on every pass
        while not done.is_set():
            time.sleep(WORK_SECONDS)  # noqa: ASYNC251 (holding the loop is the point)
            await asyncio.sleep(0)

    load = [asyncio.create_task(busy()) for _ in range(BUSY_TASKS)]
    counter = asyncio.create_task(count_passes())
    await asyncio.sleep(0)
    try:
        before = passes
        await publisher.publish(example("encounter_package"), new_job_id(), request_id=None)
        taken = passes - before
    finally:
        done.set()
        await asyncio.gather(counter, *load)
    assert taken <= 3, f"the publish took {taken} passes of the busy loop"


async def test_the_publisher_thread_ends_with_close_and_nothing_starts_it_again(
    settings,
) -> None:
    publisher = SubmissionPublisher(settings.amqp_url, Topology(settings.amqp_prefix))
    before = set(threading.enumerate())
    await publisher.connect()
    (thread,) = (t for t in set(threading.enumerate()) - before if t.name == "medevents-publisher")
    assert await publisher.ready()
    assert await publisher.queue_depth() == 0
    await publisher.close()
    assert not thread.is_alive()
    # Closed for good: no thread or connection is opened again behind the caller's back.
    with pytest.raises(BrokerUnavailable, match="closed"):
        await publisher.publish(example("encounter_package"), new_job_id(), request_id=None)
    assert not await publisher.ready()
    assert await publisher.queue_depth() is None
    assert not any(t.name == "medevents-publisher" for t in set(threading.enumerate()) - before)


async def test_a_publish_in_flight_when_the_publisher_closes_is_a_broker_outage(
    settings,
) -> None:
    """Its caller answers 503 (`BrokerUnavailable`), not a cancellation it never asked for."""
    publisher = SubmissionPublisher(settings.amqp_url, Topology(settings.amqp_prefix))
    await publisher.connect()
    started = threading.Event()

    async def never_confirmed() -> None:
        started.set()
        await asyncio.sleep(3600)

    in_flight = asyncio.create_task(publisher._on_io_loop(never_confirmed()))
    await asyncio.to_thread(started.wait, 5)
    await publisher.close()
    with pytest.raises(BrokerUnavailable, match="stopped"):
        await in_flight

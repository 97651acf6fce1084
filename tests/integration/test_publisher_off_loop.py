"""A publish is not queued behind a busy API loop: the publisher's connection runs on a loop
of its own thread (`service.messaging.loop_thread`), so its confirm waits for the broker, not
for the caller's loop to get through its backlog."""

from __future__ import annotations

import asyncio
import threading
import time

from service.domain.jobs import new_job_id
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


async def test_the_publisher_thread_ends_with_close(settings) -> None:
    from service.messaging.broker import Topology
    from service.messaging.publisher import SubmissionPublisher

    publisher = SubmissionPublisher(settings.amqp_url, Topology(settings.amqp_prefix))
    await publisher.connect()
    assert "medevents-publisher" in {thread.name for thread in threading.enumerate()}
    assert await publisher.ready()
    assert await publisher.queue_depth() == 0
    await publisher.close()
    assert "medevents-publisher" not in {thread.name for thread in threading.enumerate()}

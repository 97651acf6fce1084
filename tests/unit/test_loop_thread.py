"""`LoopThread`: a coroutine run on a loop of its own thread, as the caller would run it."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from service.messaging.loop_thread import LoopStopped, LoopThread

REQUEST = contextvars.ContextVar("request", default=None)


async def test_runs_on_another_thread_and_returns_its_result() -> None:
    io = LoopThread("test-io")

    async def where() -> tuple[str, int]:
        await asyncio.sleep(0)
        return threading.current_thread().name, id(asyncio.get_running_loop())

    try:
        name, loop_id = await io.run(where())
        assert name == "test-io"
        assert loop_id != id(asyncio.get_running_loop())
        assert io.running
    finally:
        await io.stop()
    assert not io.running


async def test_an_exception_reaches_the_caller() -> None:
    io = LoopThread("test-io")

    async def fail() -> None:
        raise LookupError("from the thread")

    try:
        with pytest.raises(LookupError, match="from the thread"):
            await io.run(fail())
    finally:
        await io.stop()


async def test_the_callers_context_travels_with_the_coroutine() -> None:
    """The request id bound for the logs is bound where the coroutine runs."""
    io = LoopThread("test-io")

    async def seen() -> str | None:
        return REQUEST.get()

    REQUEST.set("r-1")
    try:
        assert await io.run(seen()) == "r-1"
    finally:
        await io.stop()


async def test_cancelling_the_caller_cancels_the_coroutine() -> None:
    io = LoopThread("test-io")
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        caller = asyncio.create_task(io.run(forever()))
        await asyncio.to_thread(started.wait, 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await asyncio.to_thread(cancelled.wait, 5)
    finally:
        await io.stop()


async def test_stop_cancels_what_still_runs_there_and_a_later_run_starts_it_again() -> None:
    io = LoopThread("test-io")
    cancelled = threading.Event()

    async def background() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def leave_a_task() -> None:
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)

    await io.run(leave_a_task())
    await io.stop()
    assert cancelled.is_set()
    assert not io.running
    try:
        assert await io.run(asyncio.sleep(0, result="again")) == "again"
    finally:
        await io.stop()


async def test_stop_without_a_start_does_nothing() -> None:
    await LoopThread("test-io").stop()


async def test_a_coroutine_cancelled_by_stop_is_loop_stopped_for_its_caller() -> None:
    """Not a CancelledError: the caller was not cancelled, and must not take it for that."""
    io = LoopThread("test-io")
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    caller = asyncio.create_task(io.run(forever()))
    await asyncio.to_thread(started.wait, 5)
    await io.stop()
    with pytest.raises(LoopStopped):
        await caller

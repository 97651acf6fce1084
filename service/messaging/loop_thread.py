"""An event loop on a thread of its own, for I/O that must not queue behind the caller's loop.

Why: an API process whose loop is saturated by polls (a closed-loop client keeps every
connection busy) runs each ready callback once per pass over all of them. A publish with
confirms is a chain of such steps (the channel's lock, its writer, the reader that sees the
confirm, the waiter), each one a pass behind the polls: measured with one API process sharing
its CPU with three busy processes and 50 polling connections, a publish took 2-7 s and half the
submissions hit the publish timeout. On a loop of its own the chain runs at once (the thread
takes the GIL within the interpreter's switch interval), and the caller's loop pays one wake-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopStopped(RuntimeError):
    """The loop was stopped while it ran the coroutine (which was cancelled there)."""


class LoopThread:
    """A uvloop loop on a daemon thread, started at the first `run` and stopped by `stop`.

    `run` awaits a coroutine on it from another loop: the caller's context variables (the
    request id bound for the logs) travel with it, and cancelling the caller cancels it.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = uvloop.new_event_loop()
                thread = threading.Thread(
                    target=self._serve, args=(loop,), name=self._name, daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result, run on this thread's loop; `LoopStopped` when `stop`
        cancelled it there (the caller itself was not cancelled)."""
        # run_coroutine_threadsafe schedules the task with a copy of this context; the wrapped
        # future passes a cancellation on to that task.
        future = asyncio.run_coroutine_threadsafe(coroutine, self._started())
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling() == 0:
                raise LoopStopped(f"{self._name} stopped") from None
            raise

    async def stop(self) -> None:
        """Cancel what still runs on the loop (a library's background tasks), stop it and wait
        for the thread. Close what runs there first, with `run`."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


async def _cancel_the_rest() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

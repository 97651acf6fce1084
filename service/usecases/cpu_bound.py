"""CPU-bound steps of a submission, off the event loop.

Parsing a large body, verifying a signature and checking a package against its schema are
pure computation. Run on the event loop, one large submission would hold every other job, the
broker's heartbeats and the acks until it is done; run here, in a small pool of threads, the
loop gets its turn at every switch of the interpreter's lock (every 5 ms), so the rest goes
on. The work itself is bounded by the schemas (`schemas.rules.MAX_ITEMS`, `bounded_errors`).

Small inputs stay on the loop: a hop to a thread costs more than parsing them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Bodies up to this size are parsed on the event loop (well under a millisecond).
INLINE_BYTES = 64 * 1024
# Two threads: one large submission never waits for another, and the lock they share with
# the loop is not fought over by more.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cpu-bound")


async def off_loop(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` in the pool, with the caller's context variables (the dictionaries a
    schema checks codes against, the log's bound request id)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_POOL, context.run, work, *args)


async def sized_work(size: int, work: Callable[..., T], *args: object) -> T:
    """`work(*args)` on the loop when its input is at most `INLINE_BYTES`, else `off_loop`."""
    if size <= INLINE_BYTES:
        return work(*args)
    return await off_loop(work, *args)

"""A step run every so often in the background, until stopped: the retention sweep and the
reconciler (one way to start, pace and stop them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from service.storage.mongo import StoreUnavailable
from service.usecases.running import pause


class Periodic:
    def __init__(
        self, step: Callable[[], Awaitable[object]], interval_seconds: float, name: str
    ) -> None:
        """`step` runs at once, then every `interval_seconds`; its MongoDB outages are logged
        as `{name}_skipped` and its failures as `{name}_failed`, and the next run comes all
        the same."""
        self._step = step
        self._interval = interval_seconds
        self._name = name
        self._log = structlog.get_logger(f"medevents.{name}")
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops between runs, never inside one: a task cancelled inside a driver call can
        leave the driver's locks held."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._step()
            except StoreUnavailable as exc:
                self._log.warning(f"{self._name}_skipped", error=str(exc)[:200])
            except Exception:
                self._log.exception(f"{self._name}_failed")
            await pause(self._stop, self._interval)

"""Finished jobs kept in memory, so that a client polling again is answered without MongoDB."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from service.domain.jobs import JobStatus

# What a job's response is made of: its HTTP status, its `data` and the ETag of that data.
Rendered = tuple[int, Any, str]

# What an entry costs besides its rendered bytes: its key (two strings and a tuple), the
# ordered dict's slot, the entry, the stub job, the fragment and the tuple handed out
# (measured with tracemalloc: about 0.9 KiB; counted generously).
ENTRY_OVERHEAD_BYTES = 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class FinishedJobs:
    """Finished jobs' responses, kept in memory for `keep_seconds`: a terminal job never
    changes, so a poller that asks again is answered without a database round trip, and its
    response's `data` is rendered once. What is kept is the rendered response alone (its
    status, its `data` as JSON bytes, its ETag), never the job document, and the cache is
    bounded by the bytes it keeps (`max_bytes`, each entry counted with its overhead): the
    oldest entries go first. An entry outlives the job's removal by retention (days later)
    by at most `keep_seconds`. `max_bytes` 0 keeps nothing."""

    KEEP_SECONDS = 300.0

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, keep_seconds: float | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.keep_seconds = self.KEEP_SECONDS if keep_seconds is None else keep_seconds
        self._jobs: OrderedDict[tuple[str, str], _Finished] = OrderedDict()
        self.bytes_kept = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str, client_id: str) -> dict[str, Any] | None:
        """The kept job as `job_for_client` returns it: a stub (`status` alone) that
        `rendered` recognises, or None when the job is not kept (or no longer)."""
        entry = self._jobs.get((job_id, client_id))
        if entry is None:
            return None
        if time.monotonic() - entry.kept_at > self.keep_seconds:
            self._drop((job_id, client_id))
            return None
        return entry.stub

    def rendered(
        self, job_id: str, client_id: str, job: dict[str, Any], render: Callable[[dict], Rendered]
    ) -> Rendered:
        """`render(job)`: `(status, data, tag)`. For a finished job, made once and kept, with
        `data` as JSON bytes (an `orjson.Fragment`, which `orjson.dumps` writes as is); for a
        pending job, made each time and never kept."""
        key = (job_id, client_id)
        entry = self._jobs.get(key)
        if entry is not None and entry.stub is job:
            return entry.response
        status, data, tag = render(job)
        if job["status"] == JobStatus.PENDING or self.max_bytes <= 0:
            return status, data, tag
        # A copy of the exact size: orjson's own buffer is over-allocated (16 KiB for 10 KB).
        body = bytes(memoryview(orjson.dumps(data)))
        response = (status, orjson.Fragment(body), tag)
        size = len(body) + len(tag) + len(job_id) + len(client_id) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return response
        if key in self._jobs:
            self._drop(key)
        self._jobs[key] = _Finished({"status": job["status"]}, response, size, time.monotonic())
        self.bytes_kept += size
        self._evict()
        return response

    def _evict(self) -> None:
        """The oldest entries out, while they are expired or the bytes are over the bound
        (entries are in the order they were kept)."""
        now = time.monotonic()
        while self._jobs:
            key, oldest = next(iter(self._jobs.items()))
            if self.bytes_kept <= self.max_bytes and now - oldest.kept_at <= self.keep_seconds:
                return
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._jobs.pop(key)
        self.bytes_kept -= entry.size


@dataclass(slots=True)
class _Finished:
    stub: dict[str, Any]
    response: Rendered
    size: int
    kept_at: float

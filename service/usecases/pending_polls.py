"""Pending jobs a client polls, answered from memory for at most `keep_seconds`.

A pending job's response never changes while it is pending (its `data`, the status, the ETA
and the link, are written at submission): it changes when the job finishes or is cancelled,
and the API process hears of each such end through the job-finished events
(`messaging.job_events`). So once a poll has read a job pending from MongoDB, the next polls
of it in this process are answered from memory, until the first of:

- the job's finish event, or this process's own cancel of it: the entry goes at once, and the
  next poll reads MongoDB (and finds the job finished);
- `keep_seconds` (PENDING_JOB_CACHE_MS) after the read that found it pending began: the next
  poll reads MongoDB again (and keeps the job again if it is still pending);
- the event subscription going down (a broker restart, a dropped connection): every entry
  goes, and nothing is kept or answered from memory until the subscription is back (an event
  published meanwhile was not heard, and the broker does not replay it).

Why a lost event cannot keep a job pending in a client's eyes longer than `keep_seconds`:
an answer from memory comes from a read that began at some instant `r` and found the job
pending, so the job's finish was written after `r`; the entry answers only while less than
`keep_seconds` has passed since `r`, hence never later than `keep_seconds` after the finish
was written, whatever happened to its event (lost with a broker restart, sent by a process
whose publish failed, or never sent: the reconciler and a direct write send none). The events
only make the common case immediate. A finish heard while a read was in flight is remembered
(`_heard`, for `keep_seconds`), so that the pending answer of that read is not kept.

What is kept per job is its response (status, `data` as JSON bytes, ETag, ETA for
`Retry-After`), with the client that read it: another client's poll is a miss, read from
MongoDB, and answered 404 as before. The entries are bounded by the bytes they keep
(`max_bytes`, each counted with its overhead): the oldest go first; they rarely number more
than the distinct jobs polled in `keep_seconds`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

# A pending job's response: its HTTP status, its `data` as JSON bytes (written as is by
# `orjson.dumps`), its ETag and its ETA (`Retry-After` is counted from it at each answer).
PendingResponse = tuple[int, orjson.Fragment, str, datetime]

# What an entry costs besides its rendered bytes: the dict slot, the entry, the response
# tuple, the fragment, the ETA (measured with tracemalloc: about 0.6 KiB; counted generously).
ENTRY_OVERHEAD_BYTES = 1024
# About 7,000 pending jobs, each polled within `keep_seconds`: far more than a process serves.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_KEEP_SECONDS = 1.0
# Finishes remembered (each for `keep_seconds`) against a read in flight: beyond that many
# within `keep_seconds`, the oldest are forgotten and the age bound alone holds for them.
MAX_HEARD = 50_000


class PendingPolls:
    """Pending jobs' responses, answered from memory for at most `keep_seconds` after the
    read that found them pending (module docstring). It listens to the job-finished events
    (`JobEvents.listen`): until it hears that they are being received (`events_resumed`),
    it keeps nothing. `keep_seconds` 0 or `max_bytes` 0 keeps nothing."""

    def __init__(
        self, keep_seconds: float = DEFAULT_KEEP_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        # By job id (a job has one client), in the order they were kept.
        self._jobs: OrderedDict[str, _Pending] = OrderedDict()
        # Job ids heard finished within `keep_seconds`, with when, oldest first.
        self._heard: dict[str, float] = {}
        # Since when the events are received without a gap; None: not now.
        self._listening_since: float | None = None
        self.bytes_kept = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def listening(self) -> bool:
        return self._listening_since is not None

    def get(self, job_id: str, client_id: str) -> PendingResponse | None:
        """The job's kept response, or None: not kept, another client's, or too old."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.client_id != client_id:
            return None
        if time.monotonic() - entry.read_at >= self.keep_seconds:
            self._drop(job_id)
            return None
        return entry.response

    def keep(
        self,
        job_id: str,
        client_id: str,
        read_at: float,
        response: tuple[int, Any, str],
        eta: datetime,
    ) -> None:
        """Keep the response (`status, data, tag`) of a job found pending by a read that
        began at `read_at` (`time.monotonic()`), unless it is already too old, began before
        the events were received without a gap, or the job was heard finished since."""
        since = self._listening_since
        if since is None or read_at < since or self.max_bytes <= 0:
            return
        now = time.monotonic()
        if now - read_at >= self.keep_seconds:
            return
        heard = self._heard.get(job_id)
        if heard is not None and heard >= read_at:
            return
        status, data, tag = response
        # A copy of the exact size: orjson's own buffer is over-allocated.
        body = bytes(memoryview(orjson.dumps(data)))
        size = len(body) + len(tag) + len(job_id) + len(client_id) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        if job_id in self._jobs:
            self._drop(job_id)
        kept = (status, orjson.Fragment(body), tag, eta)
        self._jobs[job_id] = _Pending(client_id, kept, size, read_at)
        self.bytes_kept += size
        self._evict(now)

    # --- what the job-finished events say (`JobEvents.listen`) ---

    def jobs_finished(self, job_ids: Iterable[str]) -> None:
        """These jobs left pending: their entries go, and a read in flight keeps nothing."""
        now = time.monotonic()
        heard = self._heard
        for job_id in job_ids:
            if job_id in self._jobs:
                self._drop(job_id)
            heard.pop(job_id, None)  # to the end: the order is the order heard
            heard[job_id] = now
        horizon = now - self.keep_seconds
        while heard:
            oldest = next(iter(heard))
            if heard[oldest] >= horizon and len(heard) <= MAX_HEARD:
                break
            del heard[oldest]

    def events_interrupted(self) -> None:
        """Events may be lost from now on: nothing is answered from memory or kept."""
        self._listening_since = None
        self.clear()

    def events_resumed(self) -> None:
        """Events are received again; what was read before may have missed one."""
        self.clear()
        self._listening_since = time.monotonic()

    def clear(self) -> None:
        self._jobs.clear()
        self.bytes_kept = 0

    def _evict(self, now: float) -> None:
        """The oldest entries out, while they are too old or the bytes over the bound."""
        while self._jobs:
            job_id, oldest = next(iter(self._jobs.items()))
            if self.bytes_kept <= self.max_bytes and now - oldest.read_at < self.keep_seconds:
                return
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id)
        self.bytes_kept -= entry.size


@dataclass(slots=True)
class _Pending:
    client_id: str
    response: PendingResponse
    size: int
    read_at: float

"""The service layer for jobs: what the HTTP entrypoint asks of a job."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from service.api.auth import Principal
from service.domain.eta import EtaEstimator
from service.domain.jobs import JobStatus, is_valid_job_id, new_job_id, pending_eta, submission_hash
from service.messaging.broker import BrokerUnavailable, SubmissionPublisher
from service.storage.jobs import JobStore, NewJob, utcnow

log = structlog.get_logger("medevents.jobs")

T = TypeVar("T")


class JobNotFound(Exception):
    """No such job for this client: it does not exist, or another client submitted it."""


class FinishedJobs:
    """Finished jobs as their responses need them, kept in memory for a few minutes: a
    terminal job never changes, so a poller that asks again is answered without a database
    round trip, and its response's `data` is rendered once (`rendered`). Bounded in size; an
    entry outlives the job's removal by retention (days later) by at most `KEEP_SECONDS`."""

    KEEP_SECONDS = 300.0
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._jobs: OrderedDict[tuple[str, str], _Finished] = OrderedDict()

    def get(self, job_id: str, client_id: str) -> dict[str, Any] | None:
        entry = self._jobs.get((job_id, client_id))
        if entry is None:
            return None
        if time.monotonic() - entry.kept_at > self.KEEP_SECONDS:
            del self._jobs[(job_id, client_id)]
            return None
        return entry.job

    def keep(self, job_id: str, client_id: str, job: dict[str, Any]) -> None:
        if job["status"] == JobStatus.PENDING:
            return
        self._jobs[(job_id, client_id)] = _Finished(job, time.monotonic())
        if len(self._jobs) > self.MAX_ENTRIES:
            self._jobs.popitem(last=False)

    def rendered(
        self, job_id: str, client_id: str, job: dict[str, Any], render: Callable[[dict], T]
    ) -> T:
        """`render(job)`, made once for the job kept; made each time for any other (a pending
        job, one gone from the cache, or a read that is not the kept one)."""
        entry = self._jobs.get((job_id, client_id))
        if entry is None or entry.job is not job:
            return render(job)
        if entry.rendered is None:
            entry.rendered = render(job)
        return entry.rendered


@dataclass(slots=True)
class _Finished:
    job: dict[str, Any]
    kept_at: float
    rendered: Any = None


class _Turn:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class JobService:
    def __init__(
        self,
        store: JobStore,
        publisher: SubmissionPublisher | None = None,
        estimator: EtaEstimator | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.estimator = estimator
        self._finished = FinishedJobs()
        self._submitting: dict[str, _Turn] = {}

    async def broker_ready(self) -> bool:
        return self.publisher is not None and await self.publisher.ready()

    async def job_for_client(self, job_id: str, client_id: str) -> dict[str, Any]:
        """The job as its response needs it. An id that cannot be a job id is not looked up,
        so that nothing shaped like an operator or a path ever reaches the database."""
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = self._finished.get(job_id, client_id)
        if job is not None:
            return job
        job = await self.store.get_for_client(job_id, client_id)
        if job is None:
            raise JobNotFound(job_id)
        self._finished.keep(job_id, client_id, job)
        return job

    def rendered(
        self, job_id: str, client_id: str, job: dict[str, Any], render: Callable[[dict], T]
    ) -> T:
        """`render(job)` of the job `job_for_client` returned, made once per finished job."""
        return self._finished.rendered(job_id, client_id, job, render)

    async def submit(
        self,
        principal: Principal,
        job_type: str,
        patient_id: str,
        data: dict[str, Any],
        request_id: str,
    ) -> tuple[dict[str, Any], bool]:
        """Publish the submission and record its pending job; returns the job and whether it
        is new. An identical pending submission returns the existing job, unpublished.

        The message goes first: when the broker does not take it, there is no job at all
        (`BrokerUnavailable`, 503), never one waiting for a message that was never sent. A
        consumer quick enough to see the message before the job is written creates the same
        job from it (same id, same hash), and this write then finds it.
        """
        if self.publisher is None:
            raise BrokerUnavailable("this process has no publisher")
        submission = {
            "type": job_type,
            "patient_id": patient_id,
            "requested_by": {
                "client_id": principal.client_id,
                "user_id": principal.user_id,
                "scope": " ".join(sorted(principal.scopes)),
            },
            "data": data,
        }
        request_hash = submission_hash(submission)
        # Identical submissions arriving together (a double click) wait for each other in
        # this process, so that the second finds the first's job. Across API processes the
        # check stays racy, as the original's was.
        async with self._one_at_a_time(request_hash):
            existing = await self.store.find_pending(request_hash)
            if existing is not None:
                log.info("submission_deduplicated", job_id=existing["_id"])
                return existing, False
            job_id = new_job_id()
            # Estimated before the message is queued: the queue holds what is ahead of it.
            eta = await self.estimator.eta() if self.estimator else pending_eta(utcnow())
            # The client posted `data` itself: the paths of a 422 are to be relative to it.
            await self.publisher.publish(submission, job_id, request_id, data_root="$")
            job, _ = await self.store.create_pending(
                NewJob(
                    job_id=job_id,
                    type=job_type,
                    hash=request_hash,
                    client_id=principal.client_id,
                    user_id=principal.user_id,
                    request_id=request_id,
                    eta=eta,
                    patient_id=patient_id,
                )
            )
        log.info("job_submitted", job_id=job_id, type=job_type)
        return job, True

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, request_hash: str) -> AsyncIterator[None]:
        """A lock per hash, dropped when nobody holds or waits for it (counted)."""
        entry = self._submitting.setdefault(request_hash, _Turn())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._submitting[request_hash]

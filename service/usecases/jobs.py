"""The service layer for jobs: submitting one, and reading one as its client polls it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from marshmallow import ValidationError

from schemas.validation import invalid_entries
from service.domain.jobs import (
    JobOutcome,
    JobQuery,
    JobStatus,
    NewJob,
    is_valid_job_id,
    new_job_id,
    submission_hash,
)
from service.domain.principal import Principal
from service.messaging.broker import BrokerUnavailable
from service.messaging.job_events import JobEvents
from service.messaging.publisher import SubmissionPublisher
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.storage.patients import PatientStore
from service.usecases.eta import EtaEstimator
from service.usecases.finished_jobs import FinishedJobs, Rendered
from service.usecases.job_types import JobType, JobTypeRegistry
from service.usecases.submissions import (
    PATIENT_NOT_ACTIVE,
    PATIENT_NOT_FOUND,
    PendingJobs,
    submission_body,
)

log = structlog.get_logger("medevents.jobs")

# Inserts of a submission's pending job while the identical one holding its key ends.
RESERVE_ATTEMPTS = 3

# How a job ends when the broker did not take its message: another API's identical request
# may have been handed this job meanwhile, and its client polls it (`submit`).
NOT_QUEUED = JobOutcome.failed_with_error(
    "The submission could not be queued: the message broker did not take it. Submit it again."
)


class JobNotFound(Exception):
    """No such job for this client: it does not exist, or another client submitted it."""


class JobAlreadyFinished(Exception):
    """A cancel of a job that is no longer pending (it may have finished an instant before)."""


# The scope a cancel needs for a job of a type this service does not know (a producer's
# message named it; the consumer will end it 422): no client's submitting scope covers it.
UNKNOWN_TYPE_CANCEL_SCOPE = "jobs:admin"


class SubmissionRefused(Exception):
    """What the original answers on the request itself, before any job: 404 (no such
    patient), 409 (patient not active), 422 (`invalid`: the request's schema)."""

    def __init__(
        self, status: int, message: str, invalid: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.invalid = invalid


class _Turn:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class JobService:
    # Told of each job this service ended itself (a client's cancel), with the job as stored;
    # set by the composition root (webhooks). A failure is logged and does not undo the end.
    on_job_ended: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def __init__(
        self,
        store: JobStore,
        publisher: SubmissionPublisher | None = None,
        estimator: EtaEstimator | None = None,
        events: JobEvents | None = None,
        *,
        patients: PatientStore | None = None,
        entities: EntityStore | None = None,
    ) -> None:
        """`events`: the job-finished events a long poll waits for; None: a poll that asks
        to wait answers at once. `patients`: where a submission's patient is checked before
        its job is created; None: the consumer checks it alone."""
        self.store = store
        self.patients = patients
        self.entities = entities
        self.publisher = publisher
        self.events = events
        self.pending = PendingJobs(store, estimator.eta if estimator else None)
        # Finished jobs' responses, bounded in bytes (the API sets FINISHED_JOB_CACHE_BYTES).
        self.finished_jobs = FinishedJobs()
        self._submitting: dict[str, _Turn] = {}

    async def broker_ready(self) -> bool:
        return self.publisher is not None and await self.publisher.ready()

    async def readiness(self) -> dict[str, bool]:
        """Whether MongoDB answers a ping, and whether the broker would take a message now."""
        return {"mongodb": await self.store.ping(), "broker": await self.broker_ready()}

    async def queue_depth(self) -> int | None:
        """Messages ready in the jobs queue; None when the broker cannot say now."""
        return await self.publisher.queue_depth() if self.publisher is not None else None

    async def job_for_client(
        self, job_id: str, client_id: str, *, wait: float = 0
    ) -> dict[str, Any]:
        """The job as its response needs it; `JobNotFound` when there is none for this client.
        With `wait` (seconds), a pending job is returned as soon as it finishes, or after
        `wait` as it is then (a long poll): woken by the job-finished event, not by reading
        MongoDB in a loop."""
        job = await self._job_for_client(job_id, client_id)
        if wait <= 0 or job["status"] != JobStatus.PENDING or self.events is None:
            return job
        with self.events.waiting_for(job_id) as finished:
            job = await self._job_for_client(job_id, client_id)  # it may have finished already
            if job["status"] == JobStatus.PENDING:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await finished.wait()
                job = await self._job_for_client(job_id, client_id)
        return job

    async def _job_for_client(self, job_id: str, client_id: str) -> dict[str, Any]:
        """The job as its response needs it. An id that cannot be a job id is not looked up,
        so that nothing shaped like an operator or a path ever reaches the database."""
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = self.finished_jobs.get(job_id, client_id)
        if job is not None:
            return job
        job = await self.store.get_for_client(job_id, client_id)
        if job is None:
            raise JobNotFound(job_id)
        return job  # kept, once finished, by `rendered`

    def rendered(
        self, job_id: str, client_id: str, job: dict[str, Any], render: Callable[[dict], Rendered]
    ) -> Rendered:
        """`render(job)` (`(status, data, tag)`) of the job `job_for_client` returned, made
        once per finished job and kept as bytes (`FinishedJobs`)."""
        return self.finished_jobs.rendered(job_id, client_id, job, render)

    async def jobs_of_client(self, query: JobQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of `query.client_id`'s jobs, newest first, and the `order_key` the next page
        starts after (None on the last page)."""
        found = await self.store.list_for_client(query)
        page = found[: query.limit]
        return page, (page[-1]["order_key"] if len(found) > query.limit and page else None)

    async def cancel(
        self, job_id: str, principal: Principal, registry: JobTypeRegistry
    ) -> dict[str, Any]:
        """End the caller's pending job `failed` 499 (`JobOutcome.cancelled`); returns it.

        `JobNotFound` when it is not the caller's (as a poll answers); `ScopeDenied` unless
        the caller's scope holds what submitting a job of its type needs
        (`UNKNOWN_TYPE_CANCEL_SCOPE` for a type the registry does not know);
        `JobAlreadyFinished` when it is not pending, or stops being pending before the write:
        the store's conditional finish changes only a pending job, so a consumer that
        finishes it first wins, and one that finishes it after loses its write and removes
        what it wrote (`SubmissionProcessor._after_lost_finish`; a delivery that starts later
        finds the job ended and writes nothing). Then the long polls on it are woken in every
        API process (`JobEvents.announce`) and `on_job_ended` is told."""
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = await self.store.get(job_id)
        if job is None or job.get("client_id") != principal.client_id:
            raise JobNotFound(job_id)
        job_type = registry.get(str(job.get("type")))
        principal.require(job_type.required_scope if job_type else UNKNOWN_TYPE_CANCEL_SCOPE)
        if job["status"] != JobStatus.PENDING:
            raise JobAlreadyFinished(job_id)
        ended = await self.store.finish(job_id, JobOutcome.cancelled(), count_attempt=False)
        if ended is None:  # finished by the consumer (or the reconciler) meanwhile
            raise JobAlreadyFinished(job_id)
        log.info("job_cancelled", job_id=job_id, type=job.get("type"))
        if self.events is not None:
            await self.events.announce(job_id)
        if self.on_job_ended is not None:
            try:
                await self.on_job_ended(ended)
                # Its message, still queued, finds the job ended: it need not publish again.
                await self.store.mark_notified(job_id)
            except Exception:  # the consumer publishes them when it meets the job's message
                log.exception("job_ended_hook_failed", job_id=job_id)
        return ended

    async def check_submission(
        self,
        job_type: JobType,
        patient_id: str,
        data: dict[str, Any],
        params: dict[str, str] | None = None,
    ) -> None:
        """What the original checks on the request, in its order: the patient exists (404)
        and is active (409), the entity the path names exists (404), the request has its
        schema (422). `SubmissionRefused` if not."""
        if job_type.needs_active_patient and self.patients is not None:
            patient = await self.patients.get(patient_id)
            if patient is None:
                raise SubmissionRefused(404, PATIENT_NOT_FOUND)
            if patient.get("status") != "active":
                raise SubmissionRefused(409, PATIENT_NOT_ACTIVE)
        named = job_type.http.names if job_type.http is not None else None
        if named is not None and self.entities is not None:
            param, kind = named
            entity_id = (params or {}).get(param, "")
            if not await self.entities.found(kind.collection, [entity_id], patient_id):
                raise SubmissionRefused(404, f"{kind.title} not found")
        try:
            job_type.schema.load(data)
        except ValidationError as exc:
            raise SubmissionRefused(422, "", invalid_entries(exc.messages)) from None

    async def submit(
        self,
        principal: Principal,
        job_type: JobType,
        patient_id: str,
        data: dict[str, Any],
        request_id: str,
        params: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Check the request (`check_submission`), record its pending job and publish it;
        returns the job and whether it is new. An identical pending submission returns the
        existing job, unpublished.

        One pending job per identical submission, across API processes: the job is inserted
        with its request hash as `pending_key`, which a unique index keeps to one pending job
        (the write that ends a job removes it). The key is taken before the message is
        published, so that the loser of a race publishes nothing (its message could only
        make a second job). When the broker does not take the message, this client gets
        `BrokerUnavailable` (503) and the job ends `failed_with_error` (500, `NOT_QUEUED`:
        submit it again) through the conditional finish, which removes its key: it is not
        removed, since an identical request to another API may have been handed it meanwhile,
        and its client polls it. If that write fails too (MongoDB lost in between), or the
        process dies between the insert and the publish, the job has no message, and the
        reconciler ends it once past its deadline (`usecases.reconciler`).
        """
        if self.publisher is None:
            raise BrokerUnavailable("this process has no publisher")
        await self.check_submission(job_type, patient_id, data, params)
        submission = submission_body(job_type.name, patient_id, principal, data, params)
        request_hash = submission_hash(submission)
        # Identical submissions arriving together (a double click) wait for each other in
        # this process, so that the second finds the first's job without a failed insert;
        # across API processes the unique `pending_key` decides.
        async with self._one_at_a_time(request_hash):
            # Also a pending job of the same hash without the key (one a producer's message
            # made, or one stored before the key existed).
            existing = await self.store.find_pending(request_hash)
            if existing is not None:
                log.info("submission_deduplicated", job_id=existing["_id"])
                return existing, False
            job_id = new_job_id()
            # Estimated before the message is queued: the queue holds what is ahead of it.
            eta = await self.pending.eta()
            new_job = NewJob(
                job_id=job_id,
                type=job_type.name,
                hash=request_hash,
                client_id=principal.client_id,
                user_id=principal.user_id,
                request_id=request_id,
                eta=eta,
                patient_id=patient_id,
            )
            for _ in range(RESERVE_ATTEMPTS):
                job, new = await self.store.create_pending(new_job, pending_key=request_hash)
                if job is not None:
                    break
                # The job holding the key ended between our insert and our read: try again.
            else:
                raise StoreUnavailable("the submission's pending key kept changing hands")
            if not new:
                log.info("submission_deduplicated", job_id=job["_id"])
                return job, False
            try:
                # The client posted `data` itself: the paths of a 422 are to be relative to it.
                await self.publisher.publish(submission, job_id, request_id, data_root="$")
            except BaseException:
                # Ended, never removed: another API's identical request may hold this job.
                with contextlib.suppress(StoreUnavailable):
                    if await self.store.finish(job_id, NOT_QUEUED, count_attempt=False):
                        log.warning("job_not_queued", job_id=job_id, status_code=500)
                raise
        log.info("job_submitted", job_id=job_id, type=job_type.name)
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

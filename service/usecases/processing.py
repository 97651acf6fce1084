"""The service layer of the consumer: from a delivered body to a finished job.

It knows nothing of AMQP: the consumer hands it a `Delivery` and acks once it returns. Every
step can run again after a crash and ends in the same state:

1. `accept`: the job exists (created pending when a producer published straight to the
   broker), or is already terminal (a redelivery: nothing more to do).
2. `complete`: body, job type, scope, `data`, patient and the handler's business rules give
   the outcome; one atomic write ends the job. An unexpected exception is retried a bounded
   number of times, then the job ends `failed_with_error` (500). `StoreUnavailable` is never
   turned into an outcome: it goes up, and the consumer retries the message later.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from marshmallow import Schema, ValidationError

from schemas.rules import Rule, bounded_errors
from schemas.validation import invalid_entries, single_entry
from service.domain.clock import utcnow
from service.domain.jobs import JobOutcome, JobStatus, submission_hash
from service.domain.principal import Principal, ScopeDenied
from service.observability.metrics import JOB_PROCESSING, JOBS_FINISHED
from service.signatures import SignatureDecoder
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.storage.outcome_stats import OutcomeRecorder
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.cpu_bound import sized_work
from service.usecases.job_types import JobContext, JobFailed, JobType, JobTypeRegistry
from service.usecases.submissions import (
    PATIENT_NOT_ACTIVE,
    PATIENT_NOT_FOUND,
    UNKNOWN_TYPE,
    ParsedBody,
    PendingJobs,
    parse_body_off_loop,
    short_text,
)

log = structlog.get_logger("medevents.processing")

MAX_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 0.5
INTERNAL_ERROR = JobOutcome.failed_with_error(
    "The job could not be processed because of an internal error"
)


class JobIdTaken(Exception):
    """The message's job id belongs to a different submission: the message is not that job's,
    and must not finish it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: str
    body: bytes
    request_id: str | None = None
    # Where the client's document sits, for the paths of a 422 (messaging.headers.data_root_in).
    data_root: list[str] = field(default_factory=lambda: ["data"])

    @property
    def wrapped_by_api(self) -> bool:
        """A submission the HTTP API wrapped: its client's document is the whole `data`."""
        return not self.data_root


class SubmissionProcessor:
    def __init__(
        self,
        jobs: JobStore,
        entities: EntityStore,
        patients: PatientStore,
        registry: JobTypeRegistry,
        *,
        registries: RegistryStore,
        signatures: SignatureDecoder,
        max_attempts: int = MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY_SECONDS,
        estimate_eta: Callable[[], Awaitable[datetime]] | None = None,
        outcomes: OutcomeRecorder | None = None,
        on_finished: Callable[[float], None] | None = None,
    ) -> None:
        """`estimate_eta`: the ETA of a job a producer published straight to the broker.
        `outcomes`: counts finished jobs per minute for the operators (written with the
        consumer's load reports, `usecases.load_reports`). `on_finished`: told the processing
        time of each job this processor finished; redeliveries of finished jobs and waits for
        MongoDB are not processing time."""
        self.jobs = jobs
        self.entities = entities
        self.patients = patients
        self.registry = registry
        self.registries = registries
        self.signatures = signatures
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.pending = PendingJobs(jobs, estimate_eta)
        self.outcomes = outcomes
        self.on_finished = on_finished

    async def process(self, delivery: Delivery) -> dict[str, Any]:
        """Accept and complete; returns the job as it ends."""
        parsed = await parse_body_off_loop(delivery.body)
        job = await self.accept(delivery, parsed)
        return await self.complete(job, parsed, delivery.data_root)

    async def accept(self, delivery: Delivery, parsed: ParsedBody) -> dict[str, Any]:
        """The job of this delivery, created pending if no one created it yet.

        A job already stored under the id must be this submission's (same hash: created by
        the HTTP API, or by an earlier delivery); otherwise `JobIdTaken`. A body that is no
        usable JSON object is hashed as bytes: it can end only the job it created itself
        (with its 422), never a job another submission holds under that id.
        """
        raw = parsed.raw or {}
        request_hash = submission_hash(raw) if raw else hashlib.sha256(delivery.body).hexdigest()
        # One round trip in the usual case: the HTTP API records its job as it publishes, so
        # read first; a producer's message has no job yet, so insert first (an existing job
        # comes back from `create_pending` all the same).
        job = await self.jobs.get(delivery.job_id) if delivery.wrapped_by_api else None
        if job is None:
            requested_by = raw.get("requested_by")
            job, _ = await self.pending.create(
                delivery.job_id,
                job_type=short_text(raw, "type", 100) or UNKNOWN_TYPE,
                # Read from the body even when it is invalid, so that its client can read the 422.
                client_id=short_text(requested_by, "client_id"),
                user_id=short_text(requested_by, "user_id"),
                patient_id=short_text(raw, "patient_id", 64),
                request_hash=request_hash,
                request_id=delivery.request_id or delivery.job_id,
            )
        if job.get("hash") != request_hash:
            raise JobIdTaken(delivery.job_id)
        return job

    async def give_up(self, job_id: str) -> None:
        """End a job that cannot be processed (500), leaving nothing it wrote."""
        await self.entities.undo(job_id)
        finished = await self.jobs.finish(job_id, INTERNAL_ERROR)
        if finished is not None:
            log.error("job_given_up", status_code=500)
            self._finished(finished, None)

    async def complete(
        self, job: dict[str, Any], parsed: ParsedBody, data_root: list[str] | None = None
    ) -> dict[str, Any]:
        job_id = job["_id"]
        if JobStatus(job["status"]).is_terminal:
            log.info("job_already_finished", status=JobStatus(job["status"]).label)
            if job["status"] != JobStatus.PROCESSED:
                # An earlier delivery may have written before the job ended otherwise (and
                # failed to remove it): a job that did not end processed leaves nothing.
                await self.entities.undo(job_id)
            return job
        started = time.perf_counter()
        counted = False  # whether the attempt that gives the outcome was counted already
        while True:
            try:
                root = ["data"] if data_root is None else data_root
                outcome = await self._outcome(job, parsed, root)
                break
            except StoreUnavailable:
                raise  # not the job's fault: the consumer retries the message later
            except Exception:
                attempts = await self.jobs.record_failed_attempt(job_id)
                log.exception("job_attempt_failed", attempts=attempts)
                if attempts == 0:  # someone else finished it meanwhile
                    return await self._after_lost_finish(job_id, job)
                if attempts >= self.max_attempts:
                    # Leave nothing of a job that could not finish: what it created goes.
                    await self.entities.undo(job_id)
                    outcome, counted = INTERNAL_ERROR, True
                    break
                await asyncio.sleep(self.retry_delay * attempts)
        finished = await self.jobs.finish(job_id, outcome, count_attempt=not counted)
        if finished is None:  # ended by something else between our read and our write
            return await self._after_lost_finish(job_id, job)
        self._finished(finished, time.perf_counter() - started)
        return finished

    async def _after_lost_finish(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        """The job as something else ended it. When that end is not `processed` (the job was
        given up, reconciled or cancelled meanwhile), what this delivery wrote goes: a job
        that did not end processed leaves nothing (undone again, harmlessly, if our own
        outcome already undid it). When another delivery of the same submission ended it
        processed, the entities are the same ones, and they stay. MongoDB failing here: the
        message is retried, finds the job ended, and removes them then (`complete`)."""
        ended = await self.jobs.get(job_id) or job
        if ended["status"] != JobStatus.PROCESSED:
            await self.entities.undo(job_id)
            log.warning("job_writes_removed", reason="the job ended otherwise meanwhile")
        return ended

    def type_label(self, job_type: str | None) -> str:
        """A job type as a metric label: only the registry's names, so that a producer's
        invented types cannot grow the metrics without bound."""
        return job_type if job_type and self.registry.get(job_type) else UNKNOWN_TYPE

    def _finished(self, job: dict[str, Any], seconds: float | None) -> None:
        status, code = JobStatus(job["status"]).label, str(job["status_code"])
        log.info("job_finished", type=job.get("type"), status=status, status_code=code)
        label = self.type_label(job.get("type"))
        JOBS_FINISHED.labels(label, status, code).inc()
        if self.outcomes is not None:
            self.outcomes.record(utcnow(), status, job["status_code"], seconds)
        if seconds is not None:
            JOB_PROCESSING.labels(label).observe(seconds)
            if self.on_finished is not None:
                self.on_finished(seconds)

    async def _outcome(
        self, job: dict[str, Any], parsed: ParsedBody, data_root: list[str]
    ) -> JobOutcome:
        if parsed.invalid is not None:
            return JobOutcome.validation_failed(parsed.invalid)
        submission = parsed.submission
        assert submission is not None
        job_type = self.registry.get(submission["type"])
        if job_type is None:
            rule = Rule("inclusion", "is not a known job type", self.registry.names)
            return JobOutcome.validation_failed(single_entry(["type"], rule))

        requested_by = submission["requested_by"]
        requester = Principal.from_scope_text(
            requested_by["user_id"], requested_by["client_id"], requested_by["scope"]
        )
        try:
            requester.require(job_type.required_scope)
        except ScopeDenied as denied:
            return JobOutcome.failed(403, "forbidden", str(denied))
        data, invalid = await sized_work(
            parsed.size, _loaded, job_type.schema, submission["data"], data_root
        )
        if invalid is not None:
            return invalid
        try:
            params = job_type.params.load(submission.get("params") or {}) if job_type.params else {}
        except ValidationError as exc:
            return JobOutcome.validation_failed(invalid_entries(exc.messages, ["params"]))

        context = JobContext(
            job,
            submission["patient_id"],
            requested_by,
            data,
            self.jobs,
            self.entities,
            self.patients,
            self.registries,
            self.signatures,
            params,
        )
        outcome = await self._handled(job_type, context)
        if outcome.status is not JobStatus.PROCESSED and job_type.undo is not None:
            await job_type.undo(context)
        return outcome

    async def _handled(self, job_type: JobType, context: JobContext) -> JobOutcome:
        if job_type.needs_active_patient:
            patient = await self.patients.get(context.patient_id)
            if patient is None:
                return JobOutcome.failed(404, "not_found", PATIENT_NOT_FOUND)
            if patient.get("status") != "active":
                return JobOutcome.failed(409, "request_conflict", PATIENT_NOT_ACTIVE)
        try:
            return await job_type.handler(context)
        except JobFailed as failed:
            return failed.outcome


def _loaded(schema: Schema, value: Any, root: list[str | int]) -> tuple[Any, JobOutcome | None]:
    """`schema.load(value)` within the error budget, or the 422 of its errors under `root`."""
    with bounded_errors() as budget:
        try:
            return schema.load(value), None
        except ValidationError as exc:
            entries = invalid_entries(exc.messages, root)
            return None, JobOutcome.validation_failed(entries, incomplete=budget.skipped)

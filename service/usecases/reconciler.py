"""The reconciler: pending jobs that nothing will finish end `failed_with_error` (500).

A job finishes when its message is processed. Some jobs lose their message for good:

- MongoDB was unavailable at the message's last delivery: the consumer could not end the job,
  so it dead-lettered the message;
- a message crashed the consumer process at every delivery: the broker's delivery limit
  dead-lettered it;
- the HTTP API recorded the job, then the broker refused the message and MongoDB failed
  before the job could be ended (or the API process died between the two).

Every `RECONCILE_INTERVAL_SECONDS`, in each consumer process, the reconciler ends such jobs
through the same conditional `JobStore.finish` the consumer uses: only a job still pending
changes, and a message that comes after all finds its job terminal and changes nothing. It
then removes what the job wrote, as the consumer's `give_up` does (after the write that ended
the job, never before: a job some consumer is finishing after all keeps its writes).

The deadline rule. A pending job is ended at a run (at time `now`) when

1. its ETA is more than `JOB_DEADLINE_GRACE_SECONDS` (`grace`) past, and
   `max(inserted_at, quiet_since) <= now - grace`, where `quiet_since` is the start of the
   unbroken series of this reconciler's runs at each of which MongoDB answered and the jobs
   queue held no ready message: the job has existed for the grace within one such series
   (a job orphaned while the series runs is ended a grace later, not at the hard limit); or
2. it was inserted more than `JOB_MAX_PENDING_SECONDS` ago (0: never), whatever the queue.

Why rule 1 fails no job that would still finish. A job finishes only through its message,
published right after the job is inserted. When its message is ready in the queue at a run
(a backlog), the series starts again, so a backlog never counts. The runs are at most
`grace / 2` apart (the settings refuse a longer `RECONCILE_INTERVAL_SECONDS`), so a message
ready in the queue without a run seeing it is taken by a consumer within `grace / 2` of its
job's insertion; a message taken (unacked) is processed within seconds when MongoDB answers,
or retried after at most 30 s of backoff when it did not. Rule 1 asks for MongoDB answering
and the queue empty at every run for `grace` (60 s at least, 300 s by default) since the job
existed: `grace / 2 + 30 s <= grace`. A consumer that holds a message longer with MongoDB
answering is wedged; if its event loop is blocked, its heartbeats stop and the
broker closes its connection, and the message goes back to the queue (ready: the series
starts again). What is left is a message that no longer exists: dead-lettered, acked, or never
published. Rule 2 is the backstop of a queue that is never seen empty (a steady backlog); it
may end a job whose message is still queued, which then finds its job terminal and writes
nothing: the client, told to submit again, sees no half-done submission.

Several consumers may run it at once: each keeps its own series, and the conditional write
ends a job once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from service.domain.clock import utcnow
from service.domain.jobs import JobOutcome, JobStatus
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.storage.outcome_stats import OutcomeRecorder
from service.usecases.periodic import Periodic

log = structlog.get_logger("medevents.reconciler")

# Jobs ended per run at most (the next run takes the rest).
BATCH = 200

OVERDUE = JobOutcome.failed_with_error(
    "The job did not finish and will not finish by itself: its message could not be "
    "processed and was set aside for the operators (or was never queued). Submit it again."
)
SET_ASIDE = JobOutcome.failed_with_error(
    "The job could not be processed and will not finish by itself: its message was set "
    "aside for the operators. Submit it again."
)


class JobReconciler:
    def __init__(
        self,
        jobs: JobStore,
        entities: EntityStore,
        queue_depth: Callable[[], Awaitable[int | None]],
        *,
        interval_seconds: float,
        grace_seconds: float,
        max_pending_seconds: float = 0,
        on_ended: Callable[[str], None] | None = None,
        outcomes: OutcomeRecorder | None = None,
        notify_ended: Callable[[dict], Awaitable[None]] | None = None,
    ) -> None:
        """`queue_depth`: the ready messages of the jobs queue (None: the broker cannot say).
        `on_ended`: told the id of each job it ended (the job-finished event of long polls).
        `outcomes`: counts what it ended, for the dashboard."""
        self._jobs = jobs
        self._entities = entities
        self._queue_depth = queue_depth
        self._grace = timedelta(seconds=grace_seconds)
        self._max_pending = timedelta(seconds=max_pending_seconds) if max_pending_seconds else None
        self._on_ended = on_ended
        self._outcomes = outcomes
        # The webhooks of the jobs it ends (`WebhookNotifier.job_ended`); those it could not
        # publish yet are tried again at each run (at least once).
        self._notify_ended = notify_ended
        self._notify_later: dict[str, dict] = {}
        self._quiet_since: datetime | None = None
        # Jobs it ended whose writes could not be removed yet (MongoDB lost in between).
        self._undo_later: set[str] = set()
        self._periodic = Periodic(self._run_step, interval_seconds, "reconcile")

    async def run_once(self) -> list[str]:
        """One run: the ids of the jobs it ended."""
        observed_at = utcnow()
        depth = await self._queue_depth()
        try:
            await self._undo_left_over()
            grace_ago = observed_at - self._grace
            if depth != 0:
                self._quiet_since = None
                inserted_before = None
            else:
                if self._quiet_since is None:
                    self._quiet_since = observed_at
                # max(inserted_at, quiet_since) <= now - grace: the job has existed for the
                # grace within this one quiet series.
                inserted_before = grace_ago if self._quiet_since <= grace_ago else None
            hard = observed_at - self._max_pending if self._max_pending is not None else None
            if inserted_before is None and hard is None:
                # MongoDB is still asked, so that an outage starts the series again.
                await self._jobs.ping_or_raise()
                return []
            overdue = await self._jobs.overdue(
                eta_before=grace_ago,
                inserted_before=inserted_before,
                inserted_before_hard=hard,
                limit=BATCH,
            )
            return [job_id for job_id in overdue if await self._end(job_id, OVERDUE, "overdue")]
        except StoreUnavailable:
            self._quiet_since = None
            raise

    async def set_aside(self, job_id: str) -> bool:
        """End a pending job at once because its message was dead-lettered (the consumer's
        call as it rejects the message of this job); whether it ended it. MongoDB
        unavailable: False, and the job is left to the deadline rule."""
        try:
            return await self._end(job_id, SET_ASIDE, "dead_lettered")
        except StoreUnavailable as exc:
            log.warning("job_set_aside_later", job_id=job_id, error=str(exc)[:200])
            return False

    async def _end(self, job_id: str, outcome: JobOutcome, reason: str) -> bool:
        finished = await self._jobs.finish(job_id, outcome, count_attempt=False)
        if finished is None:  # not pending any more: finished by its message, or by another
            return False
        log.error("job_reconciled", job_id=job_id, reason=reason, status_code=500)
        if self._outcomes is not None:
            self._outcomes.record(utcnow(), JobStatus.FAILED_WITH_ERROR.label, 500, None)
        if self._on_ended is not None:
            self._on_ended(job_id)
        if self._notify_ended is not None:
            self._notify_later[job_id] = finished
            await self._notify_left_over()
        self._undo_later.add(job_id)
        with contextlib.suppress(StoreUnavailable):  # the next run tries again
            await self._undo_left_over()
        return True

    async def _notify_left_over(self) -> None:
        """Publish the webhooks of the jobs it ended that are not published yet; never raises
        (the next run tries again)."""
        notify = self._notify_ended
        if notify is None:  # nothing is left over without it (`_notify_later` stays empty)
            return
        for job_id, job in list(self._notify_later.items()):
            try:
                await notify(job)
                await self._jobs.mark_notified(job_id)  # a replayed message publishes nothing
            except Exception as exc:
                log.warning("job_webhooks_later", job_id=job_id, error=repr(exc)[:200])
                return
            del self._notify_later[job_id]

    async def _undo_left_over(self) -> None:
        """Remove what the jobs it ended wrote (a package half-written before a crash).
        MongoDB unavailable: raised, and tried again at the next run."""
        for job_id in list(self._undo_later):
            try:
                await self._entities.undo(job_id)
            except StoreUnavailable:
                raise
            except Exception:  # a bug of ours: logged once, never blocking the other jobs
                log.exception("reconciled_job_undo_failed", job_id=job_id)
            self._undo_later.discard(job_id)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _run_step(self) -> None:
        await self._notify_left_over()
        await self.run_once()

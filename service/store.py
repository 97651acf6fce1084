"""The job repository over PyMongo's async API.

Every driver error that means "the database cannot be reached right now" leaves this module
as `StoreUnavailable`, so callers (the HTTP error middleware, later the consumer) decide what
an outage means for them without knowing the driver.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from service.config import Settings
from service.jobs import JobOutcome, JobStatus

P = ParamSpec("P")
T = TypeVar("T")

# What a job response needs, and nothing else: one `find_one` with this projection per poll.
JOB_RESPONSE_FIELDS = {"status": 1, "status_code": 1, "eta": 1, "response": 1, "error": 1}


class StoreUnavailable(Exception):
    """MongoDB could not be reached or did not answer in time."""


def open_mongo_client(settings: Settings, url: str) -> AsyncMongoClient:
    timeout = settings.mongodb_timeout_ms
    return AsyncMongoClient(
        url,
        tz_aware=True,
        appname="medevents",
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        # One operation may take longer than finding a server, but never hang a request.
        socketTimeoutMS=5 * timeout,
    )


def unavailable_on_outage(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ConnectionFailure as exc:  # includes server selection and network timeouts
            raise StoreUnavailable(str(exc)) from exc
        except PyMongoError as exc:
            if exc.timeout:
                raise StoreUnavailable(str(exc)) from exc
            raise

    return wrapper


def utcnow() -> datetime:
    """Now, at the millisecond precision BSON keeps, so what is written is what is read."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class NewJob:
    job_id: str
    type: str
    hash: str
    client_id: str
    user_id: str
    request_id: str
    eta: datetime
    # Shown to operators (the dashboard); None when the body did not say.
    patient_id: str | None = None

    def to_document(self, now: datetime) -> dict[str, Any]:
        return {
            "_id": self.job_id,
            "type": self.type,
            "status": int(JobStatus.PENDING),
            "status_code": 202,
            "hash": self.hash,
            "client_id": self.client_id,
            "user_id": self.user_id,
            "request_id": self.request_id,
            "patient_id": self.patient_id,
            "eta": self.eta,
            "inserted_at": now,
            "updated_at": now,
            "attempts": 0,
        }


TIES_MARGIN = 100


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What an operator asks of the job list. `after` is the (inserted_at, id) of the last
    job of the previous page."""

    status: JobStatus | None = None
    type: str | None = None
    client_id: str | None = None
    since: datetime | None = None
    after: tuple[datetime, str] | None = None
    oldest_first: bool = False
    limit: int = 50


def _shown_before(job: dict[str, Any], query: JobQuery) -> bool:
    if query.after is None or job.get("inserted_at") != query.after[0]:
        return False
    return job["_id"] <= query.after[1] if query.oldest_first else job["_id"] >= query.after[1]


class JobStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.database = db
        self._jobs: AsyncCollection = db["jobs"]

    @unavailable_on_outage
    async def ensure_indexes(self) -> None:
        """Create the indexes the queries need; a no-op when they exist."""
        # Finding an identical pending submission (deduplication, as the original did).
        await self._jobs.create_index([("hash", ASCENDING), ("status", ASCENDING)])
        # Finding finished jobs past their retention period.
        await self._jobs.create_index([("status", ASCENDING), ("updated_at", ASCENDING)])
        # The operators' list, newest or oldest first, of all jobs or of one status.
        await self._jobs.create_index([("inserted_at", DESCENDING)])
        await self._jobs.create_index([("status", ASCENDING), ("inserted_at", DESCENDING)])

    async def ping(self) -> bool:
        """Whether the server answers now (readiness)."""
        try:
            await self._jobs.database.command("ping")
        except PyMongoError:
            return False
        return True

    @unavailable_on_outage
    async def get_for_client(self, job_id: str, client_id: str) -> dict[str, Any] | None:
        """The fields a response needs, or None when the job does not exist or is another
        client's: the caller cannot tell the two apart, by design."""
        # The `find` command itself, not `find_one`: the same query and single round trip,
        # without a cursor object around it; the hottest read there is (README, "Polling").
        reply = await self._jobs.database.command(
            {
                "find": self._jobs.name,
                "filter": {"_id": job_id, "client_id": client_id},
                "projection": JOB_RESPONSE_FIELDS,
                "limit": 1,
                "singleBatch": True,
            },
            read_preference=self._jobs.read_preference,
            codec_options=self._jobs.codec_options,
        )
        batch = reply["cursor"]["firstBatch"]
        return batch[0] if batch else None

    @unavailable_on_outage
    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._jobs.find_one({"_id": job_id})

    @unavailable_on_outage
    async def find_pending(self, request_hash: str) -> dict[str, Any] | None:
        """A pending job of an identical submission (same hash), as the original found one."""
        return await self._jobs.find_one({"hash": request_hash, "status": int(JobStatus.PENDING)})

    @unavailable_on_outage
    async def create_pending(self, job: NewJob) -> tuple[dict[str, Any], bool]:
        """Insert a pending job; returns it and whether it is new. The job already stored
        under the same id (an HTTP submission's, a redelivery's) is returned instead."""
        document = job.to_document(utcnow())
        try:
            await self._jobs.insert_one(document)
        except DuplicateKeyError:
            return await self._jobs.find_one({"_id": job.job_id}), False
        return document, True

    @unavailable_on_outage
    async def finish(
        self, job_id: str, outcome: JobOutcome, *, count_attempt: bool = True
    ) -> dict[str, Any] | None:
        """Move a pending job to its terminal state, atomically.

        Returns the finished job, or None when it was not pending (already terminal, or
        missing): a terminal job is never changed again. `updated_at` is set by the server
        with `$currentDate`, which every MongoDB-compatible server stores as a date.
        `attempts` counts the attempts that ended: this one, unless `record_failed_attempt`
        already counted it.
        """
        update: dict[str, Any] = {
            "$set": outcome.to_update(),
            "$currentDate": {"updated_at": True},
        }
        if count_attempt:
            update["$inc"] = {"attempts": 1}
        return await self._jobs.find_one_and_update(
            {"_id": job_id, "status": int(JobStatus.PENDING)},
            update,
            return_document=ReturnDocument.AFTER,
        )

    @unavailable_on_outage
    async def list_jobs(self, query: JobQuery) -> list[dict[str, Any]]:
        """A page of jobs for operators, in `inserted_at` order (ties by id), after
        `query.after`; `query.limit + 1` of them at most, so the caller knows whether more
        follow. Served by the `{inserted_at}` and `{status, inserted_at}` indexes."""
        direction = ASCENDING if query.oldest_first else DESCENDING
        conditions: dict[str, Any] = {}
        if query.status is not None:
            conditions["status"] = int(query.status)
        if query.type:
            conditions["type"] = query.type
        if query.client_id:
            conditions["client_id"] = query.client_id
        bounds: dict[str, Any] = {}
        if query.since is not None:
            bounds["$gte"] = query.since
        if query.after is not None:
            bounds["$gte" if query.oldest_first else "$lte"] = query.after[0]
        if bounds:
            conditions["inserted_at"] = bounds
        # Jobs inserted in the same millisecond as the cursor's come first and are dropped
        # below when already shown: the margin covers that many ties.
        wanted = query.limit + 1 + (TIES_MARGIN if query.after is not None else 0)
        cursor = (
            self._jobs.find(conditions, {"hash": 0})
            .sort([("inserted_at", direction), ("_id", direction)])
            .limit(wanted)
        )
        page = [job async for job in cursor if not _shown_before(job, query)]
        return page[: query.limit + 1]

    @unavailable_on_outage
    async def count_pending(self, cap: int) -> int:
        """Pending jobs, counted up to `cap` (a read of the index, never of every job)."""
        found = self._jobs.find({"status": int(JobStatus.PENDING)}, {"_id": 1}).limit(cap)
        return len(await found.to_list())

    @unavailable_on_outage
    async def remove_finished_before(self, cutoff: datetime) -> int:
        """Remove the jobs that finished before `cutoff`; pending jobs stay, however old."""
        finished = [int(status) for status in JobStatus if status.is_terminal]
        result = await self._jobs.delete_many(
            {"status": {"$in": finished}, "updated_at": {"$lt": cutoff}}
        )
        return result.deleted_count

    @unavailable_on_outage
    async def record_failed_attempt(self, job_id: str) -> int:
        """Count an attempt that ended in an unexpected error; returns the attempts so far."""
        job = await self._jobs.find_one_and_update(
            {"_id": job_id, "status": int(JobStatus.PENDING)},
            {"$inc": {"attempts": 1}},
            projection={"attempts": 1},
            return_document=ReturnDocument.AFTER,
        )
        return job["attempts"] if job else 0

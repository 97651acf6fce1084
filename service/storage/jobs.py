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
from pymongo.errors import AutoReconnect, ConnectionFailure, DuplicateKeyError, PyMongoError

from service.config import Settings
from service.domain.jobs import JobOutcome, JobStatus

P = ParamSpec("P")
T = TypeVar("T")

# What a job response needs, and nothing else; a poll reads these and the job's client.
JOB_RESPONSE_FIELDS = {"status": 1, "status_code": 1, "eta": 1, "response": 1, "error": 1}
JOB_READ_FIELDS = {**JOB_RESPONSE_FIELDS, "client_id": 1}


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


def order_key(inserted_at: datetime, job_id: str) -> str:
    """A job's place in the operators' list: its insertion time as 17 digits (UTC, to the
    millisecond), so that the strings sort as the times do, then its id, which breaks ties.
    One field, so that one index serves both the filter and the sort on any MongoDB, and a page
    ends at a key no other job has (`order_key(since, "")` sorts before every job inserted at
    `since` or later). Digits, not ISO 8601: the test server compares strings that look like
    dates as dates, and `$lt` on such a string matches nothing there."""
    at = inserted_at.astimezone(UTC)
    return f"{at.year:04d}" + at.strftime("%m%d%H%M%S") + f"{at.microsecond // 1000:03d}|{job_id}"


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
            "order_key": order_key(now, self.job_id),
            "attempts": 0,
        }


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What an operator asks of the job list. `after` is the `order_key` of the last job of
    the previous page."""

    status: JobStatus | None = None
    type: str | None = None
    client_id: str | None = None
    since: datetime | None = None
    after: str | None = None
    oldest_first: bool = False
    limit: int = 50


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
        # The operators' list, newest or oldest first, of all jobs or of one status; the
        # second also counts the pending jobs from the index alone.
        await self._jobs.create_index([("order_key", DESCENDING)])
        await self._jobs.create_index([("status", ASCENDING), ("order_key", DESCENDING)])

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
        # The hottest read there is (README, "Polling"): the `find` command itself, without
        # `find_one`'s cursor around it, by `_id` alone with the client compared here (the
        # same answer; a filter on two fields cost the server 15% more per poll).
        command = {
            "find": self._jobs.name,
            "filter": {"_id": job_id},
            "projection": JOB_READ_FIELDS,
            "limit": 1,
            "singleBatch": True,
        }
        for attempt in (1, 2):
            try:
                reply = await self._jobs.database.command(
                    command,
                    read_preference=self._jobs.read_preference,
                    codec_options=self._jobs.codec_options,
                )
                break
            except AutoReconnect:
                # A run command is not retried by the driver, as `find_one` is: retry once
                # ourselves (a primary stepping down, a dropped connection), as it would.
                if attempt == 2:
                    raise
        batch = reply["cursor"]["firstBatch"]
        if not batch or batch[0].pop("client_id", None) != client_id:
            return None
        return batch[0]

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
        """A page of jobs for operators in `order_key` order, after `query.after`;
        `query.limit + 1` of them at most, so that the caller knows whether more follow.
        Served by the `{order_key}` and `{status, order_key}` indexes."""
        conditions: dict[str, Any] = {}
        if query.status is not None:
            conditions["status"] = int(query.status)
        if query.type:
            conditions["type"] = query.type
        if query.client_id:
            conditions["client_id"] = query.client_id
        # Always bounded below: a job stored before `order_key` existed has none, and stays out.
        bounds: dict[str, Any] = {"$gte": ""}
        if query.since is not None:
            bounds["$gte"] = order_key(query.since, "")
        if query.after is not None:
            bounds["$gt" if query.oldest_first else "$lt"] = query.after
        conditions["order_key"] = bounds
        direction = ASCENDING if query.oldest_first else DESCENDING
        found = (
            self._jobs.find(conditions, {"hash": 0})
            .sort("order_key", direction)
            .limit(query.limit + 1)
        )
        return await found.to_list()

    @unavailable_on_outage
    async def count_pending(self, cap: int) -> int:
        """Pending jobs, counted up to `cap`: a read of the `{status, order_key}` index (the
        projection keeps it covered on MongoDB), never of every job."""
        found = self._jobs.find({"status": int(JobStatus.PENDING)}, {"_id": 0, "status": 1})
        return len(await found.limit(cap).to_list())

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

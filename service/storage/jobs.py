"""The job repository over PyMongo's async API: `jobs`, one document per job."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, DuplicateKeyError, PyMongoError

from service.domain.clock import utcnow
from service.domain.jobs import JobOutcome, JobQuery, JobStatus, NewJob, order_key
from service.storage.mongo import unavailable_on_outage

# The indexes of a client's own list (`list_for_client`), newest first.
CLIENT_LIST_INDEXES = (
    [("client_id", ASCENDING), ("order_key", DESCENDING)],
    [("client_id", ASCENDING), ("status", ASCENDING), ("order_key", DESCENDING)],
    [("client_id", ASCENDING), ("type", ASCENDING), ("order_key", DESCENDING)],
)


class JobStore:
    def __init__(self, db: AsyncDatabase, read_fields: Iterable[str] | None = None) -> None:
        """`read_fields`: what a poll reads of a job (`get_for_client`) besides its `_id`, the
        fields its response renders (`schemas.jobs.JOB_RESPONSE_FIELDS`); None: all of them."""
        self.database = db
        self._jobs: AsyncCollection = db["jobs"]
        # The job's client too: `get_for_client` compares it here.
        self._read_projection = (
            None if read_fields is None else {**dict.fromkeys(read_fields, 1), "client_id": 1}
        )

    @unavailable_on_outage
    async def ensure_indexes(self) -> None:
        """Create the indexes the queries need; a no-op when they exist."""
        # Finding an identical pending submission (deduplication, as eHealth's medical events
        # service does).
        await self._jobs.create_index([("hash", ASCENDING), ("status", ASCENDING)])
        # Finding finished jobs past their retention period.
        await self._jobs.create_index([("status", ASCENDING), ("updated_at", ASCENDING)])
        # The operators' list, newest or oldest first, of all jobs or of one status; the
        # second also counts the pending jobs from the index alone.
        await self._jobs.create_index([("order_key", DESCENDING)])
        await self._jobs.create_index([("status", ASCENDING), ("order_key", DESCENDING)])
        # One pending job per identical HTTP submission, across API processes: the key is set
        # on an HTTP-submitted job while it is pending, and removed by the write that ends it.
        await self._jobs.create_index(
            [("pending_key", ASCENDING)],
            name="pending_key_unique",
            unique=True,
            partialFilterExpression={"pending_key": {"$type": "string"}},
        )
        # The reconciler's pending jobs past their ETA (`overdue`).
        await self._jobs.create_index([("status", ASCENDING), ("eta", ASCENDING)])
        # A client's own jobs, newest first (`list_for_client`): all of them, of one status
        # (with or without a type), of one type. No `_id` in them: the embedded test server
        # cannot insert into a collection with a compound index holding `_id`.
        for keys in CLIENT_LIST_INDEXES:
            await self._jobs.create_index(keys)

    async def ping(self) -> bool:
        """Whether the server answers now (readiness)."""
        try:
            await self._jobs.database.command("ping")
        except PyMongoError:
            return False
        return True

    @unavailable_on_outage
    async def ping_or_raise(self) -> None:
        """`StoreUnavailable` unless the server answers now."""
        await self._jobs.database.command("ping")

    @unavailable_on_outage
    async def get_for_client(self, job_id: str, client_id: str) -> dict[str, Any] | None:
        """The fields a response needs, or None when the job does not exist or is another
        client's: the caller cannot tell the two apart, by design."""
        # The hottest read there is (docs/benchmarks.md, "Polling"): the `find` command itself,
        # without `find_one`'s cursor around it, by `_id` alone with the client compared here (the
        # same answer; a filter on two fields cost the server 15% more per poll).
        command: dict[str, Any] = {"find": self._jobs.name, "filter": {"_id": job_id}}
        if self._read_projection is not None:
            command["projection"] = self._read_projection
        command.update(limit=1, singleBatch=True)
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
    async def mark_notified(self, job_id: str) -> None:
        """The webhooks of the ended job are published: a delivery of its message that comes
        later (after a cancel, a reconciliation, a replay) does not publish them again."""
        await self._jobs.update_one(
            {"_id": job_id, "status": {"$ne": int(JobStatus.PENDING)}}, {"$set": {"notified": True}}
        )

    @unavailable_on_outage
    async def find_pending(self, request_hash: str) -> dict[str, Any] | None:
        """A pending job of an identical submission (same hash), as eHealth's medical events
        service finds one."""
        return await self._jobs.find_one({"hash": request_hash, "status": int(JobStatus.PENDING)})

    @unavailable_on_outage
    async def create_pending(
        self, job: NewJob, *, pending_key: str | None = None
    ) -> tuple[dict[str, Any] | None, bool]:
        """Insert a pending job; returns it and whether it is new. The job already stored
        under the same id (an HTTP submission's, a redelivery's) is returned instead.

        `pending_key` (an HTTP submission's request hash): the database keeps one pending job
        per key; when another holds it, that job is returned, not new (None if it ended
        between the two reads: the caller tries again)."""
        document = job.to_document(utcnow())
        if pending_key is not None:
            document["pending_key"] = pending_key
        try:
            await self._jobs.insert_one(document)
        except DuplicateKeyError:
            existing = await self._jobs.find_one({"_id": job.job_id})
            if existing is None and pending_key is not None:
                existing = await self._jobs.find_one({"pending_key": pending_key})
            return existing, False
        return document, True

    @unavailable_on_outage
    async def overdue(
        self,
        *,
        eta_before: datetime,
        inserted_before: datetime | None,
        inserted_before_hard: datetime | None,
        limit: int,
    ) -> list[str]:
        """Ids of pending jobs past a deadline, `limit` at most: their ETA before
        `eta_before` and inserted before `inserted_before` (served by `{status, eta}`), or
        inserted before `inserted_before_hard` whatever their ETA (by `{status, order_key}`).
        None: that rule is not applied. Both bounds on the insertion time are in the query, so
        that the limit counts qualifying jobs only."""
        pending = int(JobStatus.PENDING)
        found: list[str] = []
        if inserted_before is not None:
            # The insertion time as `order_key`, to the millisecond (the embedded test server
            # compares dates in a query to the second).
            soft = self._jobs.find(
                {
                    "status": pending,
                    "eta": {"$lt": eta_before},
                    "order_key": {"$gte": "", "$lt": order_key(inserted_before, "")},
                },
                {"_id": 1},
            ).sort("eta", ASCENDING)
            found += [job["_id"] for job in await soft.limit(limit).to_list()]
        if inserted_before_hard is not None and len(found) < limit:
            hard = self._jobs.find(
                {
                    "status": pending,
                    "order_key": {"$gte": "", "$lt": order_key(inserted_before_hard, "")},
                },
                {"_id": 1},
            ).sort("order_key", DESCENDING)
            found += [
                job["_id"] for job in await hard.limit(limit).to_list() if job["_id"] not in found
            ]
        return found[:limit]

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
            # An identical submission from now on is a new job (`create_pending`).
            "$unset": {"pending_key": ""},
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
    async def list_for_client(self, query: JobQuery) -> list[dict[str, Any]]:
        """A page of one client's jobs, newest first, after `query.after`; `query.limit + 1`
        at most, so that the caller knows whether more follow. The client is always in the
        filter, whatever the cursor says: a forged cursor only moves within the client's own
        jobs. Served by `{client_id, order_key}`, `{client_id, status, order_key}` (a status,
        with or without a type) and `{client_id, type, order_key}` (a type alone). Reads the
        fields a poll reads, with `type` and `order_key`."""
        if not query.client_id:
            raise ValueError("a client's list needs its client_id")
        conditions: dict[str, Any] = {"client_id": query.client_id}
        if query.status is not None:
            conditions["status"] = int(query.status)
        if query.type:
            conditions["type"] = query.type
        bounds: dict[str, Any] = {"$gte": ""}  # a job stored before `order_key` stays out
        if query.since is not None:
            bounds["$gte"] = order_key(query.since, "")
        if query.after is not None:
            bounds["$lt"] = query.after
        conditions["order_key"] = bounds
        projection = (
            {"hash": 0}
            if self._read_projection is None
            else {**self._read_projection, "type": 1, "order_key": 1}
        )
        found = (
            self._jobs.find(conditions, projection)
            .sort("order_key", DESCENDING)
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

"""Webhook endpoints (`webhook_endpoints`) and the attempts to deliver to them
(`webhook_deliveries`).

An endpoint: `{_id, client_id, url, events, secrets: [{"key", "expires_at"}], created_at,
slot}`. `secrets` holds the signing secrets, newest first, stored as they sign (`whsec_...`);
`expires_at` (epoch seconds, None: never) ends an old secret's overlap after a rotation.
`slot` (0 to MAX_ENDPOINTS_PER_CLIENT - 1), unique per client (a unique index), makes the
endpoint limit hold under concurrent registrations (`create_within_limit`).
`secrets_version` (missing before the first rotation) counts the rotations: a rotation
replaces `secrets` only if it is still the one it read (`rotate_secrets`), so two at once
cannot both keep the same previous secret.

An attempt: `{_id, endpoint_id, client_id, webhook_id, event_type, job_id, attempt, status,
duration_ms, response_status, error, at, seq}`; `seq` (microseconds since the epoch and a
per-process counter: two processes may give the same) then `_id` (unique) order an endpoint's
attempts, newest first, served by `{endpoint_id, seq}`; a page's cursor is the last
attempt's `(seq, _id)`, so equal `seq`s never make a page skip an attempt. `at` serves the
retention (`remove_deliveries_before`).

The webhook process reads an endpoint and records an attempt for every delivery: the reads
(`get`) made while one is in progress go together into the next (one `$in` query), and so do
the records (`record_attempt`, one `insert_many`), a group commit with no timer: a call waits
for the round trip that holds its own item, which starts after the call (so no read is older
than its call, no attempt is acked before its record), and one round trip serves every call
made during the previous one (`_Grouped`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from service.storage.mongo import StoreUnavailable, unavailable_on_outage

ENDPOINTS = "webhook_endpoints"
DELIVERIES = "webhook_deliveries"
# Endpoints one client may register.
MAX_ENDPOINTS_PER_CLIENT = 20

_sequence = itertools.count()


# Items of one grouped round trip at most (the webhook prefetch is 32 by default).
GROUP_LIMIT = 256

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class _Grouped(Generic[Item, Answer]):
    """`await grouped(item)`: the items asked while a round trip is in progress go together in
    the next one (`run(items)`, one answer per item, an exception instance to raise to that
    caller alone), started as soon as the previous one ends. One round trip at a time: a
    caller waits at most for the one in progress, then its own."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Answer | Exception]]]) -> None:
        self._run = run
        self._waiting: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        draining = self._draining
        if draining is not None and (draining.done() or draining.get_loop() is not loop):
            # A loop closed during a round trip (tests): what waited there waits no more.
            self._waiting = [(i, f) for i, f in self._waiting if f.get_loop() is loop]
            draining = None
        self._waiting.append((item, future))
        if draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:GROUP_LIMIT]
                del self._waiting[:GROUP_LIMIT]
                try:
                    answers = await self._run([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # StoreUnavailable, a bug: each caller raises it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                if len(answers) != len(batch):  # a bug: no caller left waiting for ever
                    answers = [RuntimeError("grouped call answered wrong")] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            if self._draining is asyncio.current_task():
                self._draining = None
                # Cancelled mid-round: those queued meanwhile are cancelled, not left waiting.
                for _, future in self._waiting:
                    future.cancel()
                self._waiting.clear()


def _next_seq() -> int:
    # Nanoseconds, with a per-process counter in the last digits: attempts recorded in one
    # process within one tick still sort apart (two processes may collide: `_id` breaks ties).
    return time.time_ns() // 1000 * 1000 + next(_sequence) % 1000


def _copy(endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {**endpoint, "secrets": [dict(s) for s in endpoint.get("secrets", [])]}


class WebhookStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._endpoints = db[ENDPOINTS]
        self._deliveries = db[DELIVERIES]
        self._reads: _Grouped[str, dict[str, Any] | None] = _Grouped(self._get_many)
        self._records: _Grouped[dict[str, Any], None] = _Grouped(self._insert_attempts)

    async def ensure_indexes(self) -> None:
        await self._ensure_indexes()

    @unavailable_on_outage
    async def _ensure_indexes(self) -> None:
        await self._endpoints.create_index([("client_id", ASCENDING)])
        await self._endpoints.create_index(
            [("client_id", ASCENDING), ("slot", ASCENDING)],
            unique=True,
            partialFilterExpression={"slot": {"$exists": True}},
            name="client_id_slot_unique",
        )
        await self._deliveries.create_index([("endpoint_id", ASCENDING), ("seq", DESCENDING)])
        await self._deliveries.create_index([("at", ASCENDING)])

    # --- endpoints ---

    @unavailable_on_outage
    async def create(self, endpoint: dict[str, Any]) -> dict[str, Any]:
        await self._endpoints.insert_one(endpoint)
        return endpoint

    @unavailable_on_outage
    async def create_within_limit(
        self, endpoint: dict[str, Any], limit: int = MAX_ENDPOINTS_PER_CLIENT
    ) -> dict[str, Any] | None:
        """Insert `endpoint` in a free slot of its client's; None when the client has `limit`
        endpoints. Two registrations racing for the last slot: one insert fails on the unique
        index, and that one looks again."""
        client_id = endpoint["client_id"]
        while True:
            found = await self._endpoints.find({"client_id": client_id}, {"slot": 1}).to_list()
            if len(found) >= limit:
                return None
            used = {e.get("slot") for e in found}
            slot = next(s for s in range(limit) if s not in used)
            try:
                await self._endpoints.insert_one({**endpoint, "slot": slot})
            except DuplicateKeyError:
                continue  # taken meanwhile
            return {**endpoint, "slot": slot}

    @unavailable_on_outage
    async def count_for_client(self, client_id: str) -> int:
        return await self._endpoints.count_documents({"client_id": client_id})

    @unavailable_on_outage
    async def list_for_client(self, client_id: str) -> list[dict[str, Any]]:
        found = await self._endpoints.find({"client_id": client_id}).to_list()
        return sorted(found, key=lambda endpoint: endpoint["created_at"], reverse=True)

    @unavailable_on_outage
    async def get_for_client(self, endpoint_id: str, client_id: str) -> dict[str, Any] | None:
        return await self._endpoints.find_one({"_id": endpoint_id, "client_id": client_id})

    async def get(self, endpoint_id: str) -> dict[str, Any] | None:
        """The endpoint as it is once this call is made (a read grouped with the others made
        meanwhile: one query for them)."""
        return await self._reads(endpoint_id)

    @unavailable_on_outage
    async def _get_many(self, endpoint_ids: list[str]) -> list[dict[str, Any] | Exception | None]:
        wanted = list(dict.fromkeys(endpoint_ids))
        if len(wanted) == 1:
            found = await self._endpoints.find_one({"_id": wanted[0]})
            by_id = {} if found is None else {found["_id"]: found}
        else:
            cursor = self._endpoints.find({"_id": {"$in": wanted}})
            by_id = {endpoint["_id"]: endpoint async for endpoint in cursor}
        # Each caller its own copy: one may change what it got without the others seeing it.
        return [_copy(by_id.get(endpoint_id)) for endpoint_id in endpoint_ids]

    @unavailable_on_outage
    async def delete_for_client(self, endpoint_id: str, client_id: str) -> bool:
        deleted = await self._endpoints.delete_one({"_id": endpoint_id, "client_id": client_id})
        return deleted.deleted_count == 1

    @unavailable_on_outage
    async def rotate_secrets(
        self, endpoint: dict[str, Any], secrets: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Replace the secrets of `endpoint` (as read) if no rotation changed them since:
        `secrets_version` is still the one read (missing: never rotated); None otherwise (the
        endpoint is gone, or another rotation came first)."""
        version = endpoint.get("secrets_version")
        return await self._endpoints.find_one_and_update(
            {
                "_id": endpoint["_id"],
                "client_id": endpoint["client_id"],
                "secrets_version": version,
            },
            {"$set": {"secrets": secrets, "secrets_version": (version or 0) + 1}},
            return_document=ReturnDocument.AFTER,
        )

    @unavailable_on_outage
    async def subscriptions(self) -> list[dict[str, Any]]:
        """Every endpoint's id, client and events (no URL, no secret): the notifier's cache."""
        return await self._endpoints.find({}, {"client_id": 1, "events": 1}).to_list()

    # --- delivery attempts ---

    async def record_attempt(self, attempt: dict[str, Any]) -> None:
        """Recorded once this returns (an insert grouped with the others made meanwhile)."""
        await self._records({"_id": uuid.uuid4().hex, "seq": _next_seq(), **attempt})

    @unavailable_on_outage
    async def _insert_attempts(self, attempts: list[dict[str, Any]]) -> list[Exception | None]:
        if len(attempts) == 1:
            await self._deliveries.insert_one(attempts[0])
            return [None]
        try:
            await self._deliveries.insert_many(attempts, ordered=False)
        except BulkWriteError as exc:  # each failed insert raised to its own caller only
            if exc.timeout or exc.details.get("writeConcernErrors"):
                # Not known written: every caller hears an outage, as from insert_one.
                unavailable = StoreUnavailable(str(exc)[:200])
                return [unavailable] * len(attempts)
            answers: list[Exception | None] = [None] * len(attempts)
            for error in exc.details.get("writeErrors", []):
                kind = DuplicateKeyError if error.get("code") == 11000 else WriteError
                answers[error["index"]] = kind(error.get("errmsg", ""), error.get("code"), error)
            return answers
        return [None] * len(attempts)

    @unavailable_on_outage
    async def deliveries(
        self, endpoint_id: str, before: tuple[int, str | None] | None, limit: int
    ) -> list[dict[str, Any]]:
        """An endpoint's attempts, newest first (`seq`, then `_id`), after the cursor `before`
        (the `(seq, _id)` of the previous page's last; `_id` None: every attempt of a lower
        `seq`): `limit + 1` at most, so that the caller knows whether more follow."""
        query: dict[str, Any] = {"endpoint_id": endpoint_id}
        if before is not None:
            seq, last_id = before
            if last_id is None:
                query["seq"] = {"$lt": seq}
            else:
                query["$or"] = [{"seq": {"$lt": seq}}, {"seq": seq, "_id": {"$lt": last_id}}]
        cursor = (
            self._deliveries.find(query)
            .sort([("seq", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
        )
        return await cursor.to_list()

    @unavailable_on_outage
    async def remove_deliveries_before(self, cutoff: datetime) -> int:
        removed = await self._deliveries.delete_many({"at": {"$lt": cutoff}})
        return removed.deleted_count

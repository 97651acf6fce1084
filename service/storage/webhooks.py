"""Webhook endpoints (`webhook_endpoints`) and the attempts to deliver to them
(`webhook_deliveries`).

An endpoint: `{_id, client_id, url, events, secrets: [{"key", "expires_at"}], created_at}`.
`secrets` holds the signing secrets, newest first, stored as they sign (`whsec_...`);
`expires_at` (epoch seconds, None: never) ends an old secret's overlap after a rotation.

An attempt: `{_id, endpoint_id, client_id, webhook_id, event_type, job_id, attempt, status,
duration_ms, response_status, error, at, seq}`; `seq` (nanoseconds since the epoch, unique
enough) orders an endpoint's attempts, newest first, served by `{endpoint_id, seq}`; `at`
serves the retention (`remove_deliveries_before`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from service.storage.mongo import unavailable_on_outage

ENDPOINTS = "webhook_endpoints"
DELIVERIES = "webhook_deliveries"
# Endpoints one client may register.
MAX_ENDPOINTS_PER_CLIENT = 20

_sequence = itertools.count()


def _next_seq() -> int:
    # Nanoseconds, with a per-process counter in the last digits: attempts recorded in one
    # process within one tick still sort apart.
    return time.time_ns() // 1000 * 1000 + next(_sequence) % 1000


class WebhookStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._endpoints = db[ENDPOINTS]
        self._deliveries = db[DELIVERIES]

    async def ensure_indexes(self) -> None:
        await self._ensure_indexes()

    @unavailable_on_outage
    async def _ensure_indexes(self) -> None:
        await self._endpoints.create_index([("client_id", ASCENDING)])
        await self._deliveries.create_index([("endpoint_id", ASCENDING), ("seq", DESCENDING)])
        await self._deliveries.create_index([("at", ASCENDING)])

    # --- endpoints ---

    @unavailable_on_outage
    async def create(self, endpoint: dict[str, Any]) -> dict[str, Any]:
        await self._endpoints.insert_one(endpoint)
        return endpoint

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

    @unavailable_on_outage
    async def get(self, endpoint_id: str) -> dict[str, Any] | None:
        return await self._endpoints.find_one({"_id": endpoint_id})

    @unavailable_on_outage
    async def delete_for_client(self, endpoint_id: str, client_id: str) -> bool:
        deleted = await self._endpoints.delete_one({"_id": endpoint_id, "client_id": client_id})
        return deleted.deleted_count == 1

    @unavailable_on_outage
    async def set_secrets(
        self, endpoint_id: str, client_id: str, secrets: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        return await self._endpoints.find_one_and_update(
            {"_id": endpoint_id, "client_id": client_id},
            {"$set": {"secrets": secrets}},
            return_document=ReturnDocument.AFTER,
        )

    @unavailable_on_outage
    async def subscriptions(self) -> list[dict[str, Any]]:
        """Every endpoint's id, client and events (no URL, no secret): the notifier's cache."""
        return await self._endpoints.find({}, {"client_id": 1, "events": 1}).to_list()

    # --- delivery attempts ---

    @unavailable_on_outage
    async def record_attempt(self, attempt: dict[str, Any]) -> None:
        await self._deliveries.insert_one({"_id": uuid.uuid4().hex, "seq": _next_seq(), **attempt})

    @unavailable_on_outage
    async def deliveries(
        self, endpoint_id: str, before_seq: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """An endpoint's attempts, newest first, older than `before_seq`: `limit + 1` at most,
        so that the caller knows whether more follow."""
        query: dict[str, Any] = {"endpoint_id": endpoint_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        cursor = self._deliveries.find(query).sort("seq", DESCENDING).limit(limit + 1)
        return await cursor.to_list()

    @unavailable_on_outage
    async def remove_deliveries_before(self, cutoff: datetime) -> int:
        removed = await self._deliveries.delete_many({"at": {"$lt": cutoff}})
        return removed.deleted_count

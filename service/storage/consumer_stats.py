"""What each consumer reports of its load, for the ETA of new jobs (`domain.eta`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from service.domain.eta import LIVE_WITHIN
from service.storage.mongo import unavailable_on_outage


class ConsumerStats:
    """`consumers`: `{_id: consumer id, mean_seconds, prefetch, updated_at}`."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._consumers = db["consumers"]

    @unavailable_on_outage
    async def report(self, consumer_id: str, mean_seconds: float, prefetch: int) -> None:
        await self._consumers.update_one(
            {"_id": consumer_id},
            {
                "$set": {"mean_seconds": mean_seconds, "prefetch": prefetch},
                "$currentDate": {"updated_at": True},
            },
            upsert=True,
        )

    @unavailable_on_outage
    async def live(self, now: datetime) -> list[dict[str, Any]]:
        cursor = self._consumers.find({"updated_at": {"$gt": now - LIVE_WITHIN}})
        return [consumer async for consumer in cursor]

    @unavailable_on_outage
    async def forget(self, consumer_id: str) -> None:
        await self._consumers.delete_one({"_id": consumer_id})

"""The patients the jobs are for."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from service.storage.mongo import unavailable_on_outage

PATIENT_STATUSES = ("active", "inactive")


class PatientStore:
    """`patients`: `{"_id": "<patient uuid>", "status": "active" | "inactive"}`, maintained
    by another system in production; `medevents patient add` writes one for local use."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._patients = db["patients"]

    @unavailable_on_outage
    async def get(self, patient_id: str) -> dict[str, Any] | None:
        return await self._patients.find_one({"_id": patient_id})

    @unavailable_on_outage
    async def put(self, patient_id: str, status: str) -> None:
        if status not in PATIENT_STATUSES:
            raise ValueError(f"a patient's status is one of {PATIENT_STATUSES}")
        await self._patients.update_one(
            {"_id": patient_id}, {"$set": {"status": status}}, upsert=True
        )

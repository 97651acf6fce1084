"""The repository of the medical entities a job creates, one collection per kind.

Every entity document carries the `job_id` that wrote it. That is what makes processing
repeatable: a redelivered message finds its own earlier writes and goes on, where another
job's entity with the same id is a conflict (409), and a job that stops half-way on a
conflict removes exactly what it wrote.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service.domain.entities import ALL_ENTITY_KINDS, ENCOUNTER, ENCOUNTER_ENTITY_KINDS, EntityKind
from service.storage.mongo import unavailable_on_outage

DUPLICATE_KEY = 11000


class EntityStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db

    def _collection(self, kind: EntityKind):  # noqa: ANN202 - an AsyncCollection
        return self._db[kind.collection]

    @unavailable_on_outage
    async def ensure_indexes(self) -> None:
        for kind in ALL_ENTITY_KINDS:
            collection = self._collection(kind)
            await collection.create_index([("job_id", ASCENDING)])
            if kind is not ENCOUNTER:
                await collection.create_index([("encounter_id", ASCENDING)])

    @unavailable_on_outage
    async def insert(
        self, kind: EntityKind, documents: list[dict[str, Any]], job_id: str
    ) -> list[str]:
        """Insert what is not there yet; returns the ids that belong to another job.

        Documents this job wrote before (a redelivery) are left as they are.
        """
        if not documents:
            return []
        collection = self._collection(kind)
        try:
            await collection.insert_many(documents, ordered=False)
            return []
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            duplicates = {
                documents[error["index"]]["_id"]: documents[error["index"]] for error in errors
            }
        found = collection.find({"_id": {"$in": list(duplicates)}}, {"job_id": 1})
        owners = {document["_id"]: document.get("job_id") async for document in found}
        taken = [entity_id for entity_id, owner in owners.items() if owner != job_id]
        if taken:
            return taken
        # Gone since (another job undoing its own writes): write ours after all.
        gone = [document for entity_id, document in duplicates.items() if entity_id not in owners]
        return await self.insert(kind, gone, job_id) if gone else []

    @unavailable_on_outage
    async def remove_written_by(self, job_id: str) -> None:
        for kind in ALL_ENTITY_KINDS:
            await self._collection(kind).delete_many({"job_id": job_id})

    @unavailable_on_outage
    async def get(self, kind: EntityKind, patient_id: str, entity_id: str) -> dict[str, Any] | None:
        return await self._collection(kind).find_one({"_id": entity_id, "patient_id": patient_id})

    @unavailable_on_outage
    async def cancel_encounter(
        self,
        patient_id: str,
        encounter_id: str,
        job_id: str,
        reason: dict[str, Any] | None,
        *,
        take_over_from: str | None = None,
    ) -> list[tuple[EntityKind, str]] | None:
        """Mark the encounter and everything recorded with it as entered in error.

        Returns the entities it covers, or None when the encounter was already cancelled by
        another job. A redelivery of the same job finds its own mark and completes the rest;
        so does a job taking over from `take_over_from`, a cancel that failed half-way.
        """
        mark = {"cancelled_by_job": job_id}
        if reason is not None:
            mark["cancel_reason"] = reason
        ours = [job_id] if take_over_from is None else [job_id, take_over_from]
        claimed = await self._collection(ENCOUNTER).find_one_and_update(
            {
                "_id": encounter_id,
                "patient_id": patient_id,
                "$or": [
                    {"status": {"$ne": "entered_in_error"}},
                    {"cancelled_by_job": {"$in": ours}},
                ],
            },
            {"$set": {**mark, "status": "entered_in_error"}, "$currentDate": {"updated_at": True}},
            projection={"_id": 1},
        )
        if claimed is None:
            return None
        covered: list[tuple[EntityKind, str]] = [(ENCOUNTER, encounter_id)]
        for kind in ENCOUNTER_ENTITY_KINDS:
            collection = self._collection(kind)
            selector = {"encounter_id": encounter_id, "patient_id": patient_id}
            await collection.update_many(
                selector,
                {
                    "$set": {**mark, kind.status_field: "entered_in_error"},
                    "$currentDate": {"updated_at": True},
                },
            )
            async for document in collection.find(selector, {"_id": 1}):
                covered.append((kind, document["_id"]))
        return covered

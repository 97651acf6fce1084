"""The repository of the medical entities a job creates, one collection per kind.

Every entity document carries the `job_id` that wrote it. That is what makes processing
repeatable: a redelivered message finds its own earlier writes and goes on, where another
job's entity with the same id is a conflict (409), and a job that stops half-way on a
conflict removes exactly what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service.domain.entities import (
    ALL_ENTITY_KINDS,
    ENTERED_IN_ERROR,
    EPISODE,
    SERVICE_REQUEST,
    VISIT,
    EntityKind,
)
from service.storage.mongo import unavailable_on_outage

DUPLICATE_KEY = 11000
# What a job may write: the entities, and the visit of a package.
WRITTEN_KINDS = (*ALL_ENTITY_KINDS, VISIT, EPISODE, SERVICE_REQUEST)
# The kinds a job changes in place (an episode's update, close or cancel; a cancelled package's
# root): each change keeps what it replaced, for `undo`.
CHANGED_KINDS = (*ALL_ENTITY_KINDS, EPISODE)


class EntityStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db

    def _collection(self, kind: EntityKind):  # noqa: ANN202 - an AsyncCollection
        return self._db[kind.collection]

    @unavailable_on_outage
    async def ensure_indexes(self) -> None:
        for kind in WRITTEN_KINDS:
            collection = self._collection(kind)
            await collection.create_index([("job_id", ASCENDING)])
            if kind in ALL_ENTITY_KINDS:
                await collection.create_index([("cancelled_by_job", ASCENDING)])
            if kind in CHANGED_KINDS:
                await collection.create_index([("changed_by_job", ASCENDING)])
            # `encounter_id` and `episode_id` are served by the reads' indexes, which start
            # with `patient_id` as every query of them does (`storage.entity_reads`).

    @unavailable_on_outage
    async def insert(
        self, kind: EntityKind, documents: Sequence[Mapping[str, Any]], job_id: str
    ) -> list[str]:
        """Insert what is not there yet; returns the ids that belong to another job.

        Documents this job wrote before (a redelivery) are left as they are. A document may
        be BSON already (`RawBSONDocument`, with its `_id`): the driver sends it as it is.
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
    async def found(
        self, collection: str, ids: Iterable[str], patient_id: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """The documents of `collection` with these ids (of this patient, when given), by id:
        what a package refers to, or which of its ids are taken."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        query: dict[str, Any] = {"_id": {"$in": wanted}}
        if patient_id is not None:
            query["patient_id"] = patient_id
        return {document["_id"]: document async for document in self._db[collection].find(query)}

    @unavailable_on_outage
    async def put_episode(self, episode: dict[str, Any]) -> None:
        """Write an episode (`make run`'s demo and the tests, until episodes are submitted as
        jobs): `{"_id", "patient_id", "status": "active", "managing_organization":
        {"identifier": {"value": <legal entity>}}, ...}`."""
        await self._db["episodes"].replace_one({"_id": episode["_id"]}, episode, upsert=True)

    @unavailable_on_outage
    async def change_episode(
        self,
        patient_id: str,
        episode_id: str,
        job_id: str,
        fields: dict[str, Any],
        *,
        from_statuses: tuple[str, ...],
    ) -> bool:
        """Set `fields` on the episode if its status is one of `from_statuses` now, or if job
        `job_id` was the last to change it (a delivery again): a conditional write, so that
        two jobs racing on one episode cannot both change it, and one `undo` can take back.
        False: another job won."""
        return await self._change(EPISODE, patient_id, episode_id, job_id, fields, from_statuses)

    @unavailable_on_outage
    async def standing_in_episode(self, kind: EntityKind, patient_id: str, episode_id: str) -> bool:
        """Whether the episode has an entity of `kind` that is not entered in error."""
        found = await self._collection(kind).find_one(
            {
                "patient_id": patient_id,
                "episode_id": episode_id,
                kind.status_field: {"$ne": ENTERED_IN_ERROR},
            },
            {"_id": 1},
        )
        return found is not None

    @unavailable_on_outage
    async def wrote_any(self, kind: EntityKind, job_id: str) -> bool:
        """Whether job `job_id` wrote an entity of `kind` (served by the `job_id` index)."""
        found = await self._collection(kind).find_one({"job_id": job_id}, {"_id": 1})
        return found is not None

    @unavailable_on_outage
    async def remove_written_by(self, job_id: str) -> None:
        for kind in WRITTEN_KINDS:
            await self._collection(kind).delete_many({"job_id": job_id})

    @unavailable_on_outage
    async def get(self, kind: EntityKind, patient_id: str, entity_id: str) -> dict[str, Any] | None:
        return await self._collection(kind).find_one({"_id": entity_id, "patient_id": patient_id})

    @unavailable_on_outage
    async def mark_entered_in_error(
        self, patient_id: str, job_id: str, marks: list[tuple[EntityKind, str, Any]]
    ) -> None:
        """Mark each entity of `marks` (kind, id, its status now) as entered in error by job
        `job_id`, keeping the status it had so that `unmark` can give it back. Repeatable: an
        entity marked already (by this job, on a delivery before) is left as it is."""
        for kind, entity_id, previous in marks:
            await self._collection(kind).update_one(
                {
                    "_id": entity_id,
                    "patient_id": patient_id,
                    kind.status_field: {"$ne": ENTERED_IN_ERROR},
                },
                {
                    "$set": {
                        kind.status_field: ENTERED_IN_ERROR,
                        "cancelled_by_job": job_id,
                        "status_before_cancel": previous,
                    },
                    "$currentDate": {"updated_at": True},
                },
            )

    @unavailable_on_outage
    async def unmark(self, job_id: str) -> None:
        """Give back the status every entity job `job_id` marked had before."""
        for kind in ALL_ENTITY_KINDS:
            collection = self._collection(kind)
            marked = collection.find({"cancelled_by_job": job_id}, {"status_before_cancel": 1})
            async for document in marked:
                await collection.update_one(
                    {"_id": document["_id"], "cancelled_by_job": job_id},
                    {
                        "$set": {kind.status_field: document.get("status_before_cancel")},
                        "$unset": {"cancelled_by_job": "", "status_before_cancel": ""},
                        "$currentDate": {"updated_at": True},
                    },
                )

    async def undo(self, job_id: str) -> None:
        """Leave nothing of what job `job_id` did: its entities removed, its marks taken back,
        the fields it changed given back their values."""
        await self.remove_written_by(job_id)
        await self.unmark(job_id)
        await self.restore_changed_by(job_id)

    @unavailable_on_outage
    async def restore_changed_by(self, job_id: str) -> None:
        """Give back what job `job_id` changed in place (`_change`): the values the fields had
        before, fields it added removed. A later job that changed the same document since has
        made the change its own (its `changed_by_job`), and it stays."""
        for kind in CHANGED_KINDS:
            collection = self._collection(kind)
            async for document in collection.find({"changed_by_job": job_id}, {"before_change": 1}):
                before = document.get("before_change") or {}
                unset = dict.fromkeys(before.get("absent") or [], "")
                await collection.update_one(
                    {"_id": document["_id"], "changed_by_job": job_id},
                    {
                        **({"$set": before["values"]} if before.get("values") else {}),
                        "$unset": {**unset, "changed_by_job": "", "before_change": ""},
                        "$currentDate": {"updated_at": True},
                    },
                )

    async def _change(
        self,
        kind: EntityKind,
        patient_id: str,
        entity_id: str,
        job_id: str,
        fields: dict[str, Any],
        from_statuses: tuple[str, ...] | None = None,
    ) -> bool:
        """`$set` of top-level `fields` on one document by job `job_id`, keeping what they were
        (`before_change`) so that `restore_changed_by` can give it back. The first change reads
        the document and writes only if it is as read (its status one of `from_statuses`, and
        changed last by the same job as then); a delivery again of the same job (it changed
        the document last) sets the fields again and keeps what was before the first."""
        collection = self._collection(kind)
        document = await collection.find_one({"_id": entity_id, "patient_id": patient_id})
        if document is None:
            return False
        if document.get("changed_by_job") == job_id:
            result = await collection.update_one(
                {"_id": entity_id, "changed_by_job": job_id},
                {"$set": fields, "$currentDate": {"updated_at": True}},
            )
            return result.matched_count == 1
        if from_statuses is not None and document.get(kind.status_field) not in from_statuses:
            return False
        condition: dict[str, Any] = {
            "_id": entity_id,
            "patient_id": patient_id,
            "changed_by_job": document.get("changed_by_job"),
        }
        if from_statuses is not None:
            condition[kind.status_field] = {"$in": list(from_statuses)}
        before = {
            "values": {name: document[name] for name in fields if name in document},
            "absent": [name for name in fields if name not in document],
        }
        result = await collection.update_one(
            condition,
            {
                "$set": {**fields, "changed_by_job": job_id, "before_change": before},
                "$currentDate": {"updated_at": True},
            },
        )
        return result.matched_count == 1

    @unavailable_on_outage
    async def set_fields(
        self, kind: EntityKind, patient_id: str, entity_id: str, job_id: str, fields: dict[str, Any]
    ) -> None:
        """`$set` of plain values by job `job_id` (no datetimes: the test server stores them as
        strings), given back by `undo`."""
        if fields:
            await self._change(kind, patient_id, entity_id, job_id, fields)

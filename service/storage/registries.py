"""Records of eHealth's other registries that the checks of a job read: employees, divisions,
legal entities and dictionaries.

Another system maintains these collections in production, as it does `patients`; this service
only reads them (`medevents registry add` writes one for local use, `make run` writes demo
records). The minimal shape of each, as the checks read it:

    employees       {"_id": uuid, "status": "APPROVED", "employee_type": "DOCTOR",
                     "legal_entity_id": uuid, "party": {"tax_id": "3126509816"},
                     "user_ids": ["<user id of the token>"]}
    divisions       {"_id": uuid, "status": "ACTIVE", "legal_entity_id": uuid}
    legal_entities  {"_id": uuid, "status": "ACTIVE"}
    dictionaries    {"_id": "eHealth/encounter_classes", "is_active": true,
                     "values": {"AMB": "ambulatory", ...}}
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from service.storage.mongo import unavailable_on_outage

REGISTRIES = ("employees", "divisions", "legal_entities", "dictionaries")
# How long a process answers from the dictionaries it read: they change seldom (a new code
# is published in advance), and every package checks dozens of codes against them.
DICTIONARY_CACHE_SECONDS = 60.0


class RegistryStore:
    def __init__(
        self, db: AsyncDatabase, dictionary_cache_seconds: float = DICTIONARY_CACHE_SECONDS
    ) -> None:
        self._db = db
        self._cache_seconds = dictionary_cache_seconds
        self._dictionaries: dict[str, frozenset[str]] | None = None
        self._read_at = 0.0

    @unavailable_on_outage
    async def employees(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The employees of `ids` that exist, by id."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        found = self._db["employees"].find({"_id": {"$in": wanted}})
        return {document["_id"]: document async for document in found}

    @unavailable_on_outage
    async def division(self, division_id: str) -> dict[str, Any] | None:
        return await self._db["divisions"].find_one({"_id": division_id})

    @unavailable_on_outage
    async def legal_entity(self, legal_entity_id: str) -> dict[str, Any] | None:
        return await self._db["legal_entities"].find_one({"_id": legal_entity_id})

    @unavailable_on_outage
    async def dictionaries(self) -> dict[str, frozenset[str]]:
        """Every active dictionary: its name and its codes."""
        now = time.monotonic()
        if self._dictionaries is None or now - self._read_at > self._cache_seconds:
            found = self._db["dictionaries"].find({"is_active": True})
            self._dictionaries = {
                document["_id"]: frozenset(document.get("values") or {}) async for document in found
            }
            self._read_at = now
        return self._dictionaries

    @unavailable_on_outage
    async def put(self, registry: str, document: dict[str, Any]) -> None:
        """Write one record (for local use: the CLI and `make run`'s demo records)."""
        if registry not in REGISTRIES:
            raise ValueError(f"a registry is one of {', '.join(REGISTRIES)}")
        if "_id" not in document:
            raise ValueError("a record needs its _id")
        await self._db[registry].replace_one({"_id": document["_id"]}, document, upsert=True)
        if registry == "dictionaries":
            self._dictionaries = None

"""The read side of what jobs wrote: a patient's entities of one kind, newest first, a page at
a time, filtered as eHealth's medical events service filters its lists; and the indexes that
serve every one of those reads.

Each kind's filters are declared once (`FILTERS`: a query parameter, the stored field it
looks at, and how), and so are the indexes (`READ_INDEXES`, derived from the filters): every
query a list sends has the patient and its equality filters first, then the order
`inserted_at` descending, `_id` descending, and an index that starts with those keys. A
filter on a range of days is served by the patient's index in that order, or by the
`(patient_id, <field>)` index when the range is narrow.

Days are inclusive, in UTC: `<x>_from` is `$gte` the day's first instant, `<x>_to` is `$lt` the
next day's. The few fields stored as the client's text (a diagnostic report's `issued`, an
episode's `period.start`, which the schemas keep as they were sent) are compared as text, with
the days in ISO 8601 (`"2026-12-05"`): what a text of that day sorts after and before.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from service.domain.entities import (
    ALL_ENTITY_KINDS,
    ALLERGY_INTOLERANCE,
    CONDITION,
    DEVICE,
    DIAGNOSTIC_REPORT,
    ENCOUNTER,
    EPISODE,
    IMMUNIZATION,
    MEDICATION_ADMINISTRATION,
    MEDICATION_STATEMENT,
    OBSERVATION,
    PROCEDURE,
    READABLE_KINDS,
    RISK_ASSESSMENT,
    SERVICE_REQUEST,
    EntityKind,
)
from service.storage.mongo import unavailable_on_outage

IndexKeys = list[tuple[str, int]]

NEWEST_FIRST: IndexKeys = [("inserted_at", DESCENDING), ("_id", DESCENDING)]
# The stored field every entity of a package names its episode by (its encounter's).
EPISODE_FIELD = "episode_id"
# The test server (nx-27017) refuses every insert into a collection with an index that has
# `_id` beside other keys ("JSON path error near '_id'"); it names itself so in `buildInfo`.
_CANNOT_INDEX_ID = "nx_27017"


class Match(enum.Enum):
    EQUALS = "equals"
    FROM_DAY = "from_day"
    TO_DAY = "to_day"


@dataclass(frozen=True, slots=True)
class Filter:
    """What a query parameter asks of the stored documents: `path` equal to its value, or on
    or after / on or before its day. `text` for a field stored as ISO 8601 text."""

    path: str
    match: Match = Match.EQUALS
    text: bool = False


def _equals(path: str) -> Filter:
    return Filter(path)


def _days(stem: str, path: str, *, text: bool = False) -> dict[str, Filter]:
    return {
        f"{stem}_from": Filter(path, Match.FROM_DAY, text),
        f"{stem}_to": Filter(path, Match.TO_DAY, text),
    }


def _of_package(episode_parameter: str = "episode_id") -> dict[str, Filter]:
    return {"encounter_id": _equals("encounter_id"), episode_parameter: _equals(EPISODE_FIELD)}


# Each kind's filters by query parameter (the names of `schemas.entity_queries`).
FILTERS: dict[EntityKind, dict[str, Filter]] = {
    ENCOUNTER: {
        **_days("date", "date"),
        "episode_id": _equals(EPISODE_FIELD),
        "incoming_referral_id": _equals("incoming_referral.identifier.value"),
    },
    CONDITION: {
        "code": _equals("code.coding.code"),
        **_of_package(),
        **_days("onset_date", "onset_date"),
    },
    OBSERVATION: {
        "code": _equals("code.coding.code"),
        **_of_package(),
        **_days("issued", "issued"),
        "diagnostic_report_id": _equals("diagnostic_report.identifier.value"),
    },
    ALLERGY_INTOLERANCE: {
        "code": _equals("code.coding.code"),
        **_of_package(),
        **_days("onset_date_time", "onset_date_time"),
    },
    IMMUNIZATION: {
        "vaccine_code": _equals("vaccine_code.coding.code"),
        **_of_package(),
        **_days("date", "date"),
    },
    RISK_ASSESSMENT: {
        "code": _equals("code.coding.code"),
        **_of_package(),
        **_days("asserted_date", "asserted_date"),
    },
    DEVICE: {
        "type": _equals("type.coding.code"),
        **_of_package(),
        **_days("asserted_date", "asserted_date"),
    },
    MEDICATION_STATEMENT: {
        "medication_code": _equals("medication_code.coding.code"),
        **_of_package(),
        **_days("asserted_date", "asserted_date"),
    },
    MEDICATION_ADMINISTRATION: {
        "medication": _equals("medication.coding.code"),
        **_of_package(),
    },
    DIAGNOSTIC_REPORT: {
        "code": _equals("code.identifier.value"),
        **_of_package("context_episode_id"),
        "origin_episode_id": _equals("origin_episode.identifier.value"),
        **_days("issued", "issued", text=True),  # not checked as a date-time: kept as sent
        "based_on": _equals("based_on.identifier.value"),
    },
    PROCEDURE: {
        "code": _equals("code.coding.code"),
        **_of_package(),
    },
    EPISODE: {
        "code": _equals("type.code"),
        "status": _equals("status"),
        "managing_organization_id": _equals("managing_organization.identifier.value"),
        **_days("period", "period.start", text=True),  # a date, kept as its text
    },
    SERVICE_REQUEST: {
        "episode_id": _equals(EPISODE_FIELD),
        "status": _equals("status"),
        "code": _equals("code.identifier.value"),
        "requester_legal_entity": _equals("requester_legal_entity.identifier.value"),
        "used_by_legal_entity": _equals("used_by_legal_entity.identifier.value"),
    },
}


def _read_indexes(kind: EntityKind) -> list[IndexKeys]:
    """The patient's entities newest first; the same after each equality filter's field (the
    episode's too, for the episode's context); each day range's field after the patient."""
    patient: IndexKeys = [("patient_id", ASCENDING)]
    filters = FILTERS[kind].values()
    equal = [f.path for f in filters if f.match is Match.EQUALS]
    if kind in ALL_ENTITY_KINDS:
        equal.append(EPISODE_FIELD)
    ranged = [f.path for f in filters if f.match is not Match.EQUALS]
    return [
        [*patient, *NEWEST_FIRST],
        *([*patient, (path, ASCENDING), *NEWEST_FIRST] for path in dict.fromkeys(equal)),
        *([*patient, (path, ASCENDING)] for path in dict.fromkeys(ranged)),
    ]


# What `ensure_indexes` creates, by kind: the declaration every read is checked against.
READ_INDEXES: dict[EntityKind, list[IndexKeys]] = {
    kind: _read_indexes(kind) for kind in READABLE_KINDS
}


def _bound(found: Filter, day: date) -> dict[str, Any]:
    if found.match is Match.FROM_DAY:
        operator, start = "$gte", day
    else:
        if day == date.max:  # nothing is after the last day there is
            return {}
        operator, start = "$lt", day + timedelta(days=1)
    if found.text:
        return {operator: start.isoformat()}
    return {operator: datetime.combine(start, time.min, tzinfo=UTC)}


def list_filter(
    kind: EntityKind,
    patient_id: str,
    filters: Mapping[str, Any],
    *,
    episode_id: str | None = None,
) -> dict[str, Any]:
    """The MongoDB filter of a list: the patient, then each parameter's condition; in an
    episode's context, its episode."""
    query: dict[str, Any] = {"patient_id": patient_id}
    if episode_id is not None:
        query[EPISODE_FIELD] = episode_id
    declared = FILTERS[kind]
    for name, value in filters.items():
        found = declared[name]  # a parameter the schemas let through is declared here
        if found.match is Match.EQUALS:
            query[found.path] = value
        elif bound := _bound(found, value):
            query.setdefault(found.path, {}).update(bound)
    return query


class EntityReads:
    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db

    @unavailable_on_outage
    async def ensure_indexes(self) -> None:
        info = await self._db.client.admin.command("buildInfo")
        with_ids = info.get("process") != _CANNOT_INDEX_ID
        for kind, indexes in READ_INDEXES.items():
            collection = self._db[kind.collection]
            for keys in indexes:
                # On the test server, the order by `_id` within one instant is its own sort.
                await collection.create_index(
                    keys if with_ids else [key for key in keys if key[0] != "_id"]
                )

    @unavailable_on_outage
    async def page(
        self,
        kind: EntityKind,
        patient_id: str,
        filters: Mapping[str, Any],
        page: int,
        page_size: int,
        *,
        episode_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Page `page` (from 1) of `page_size` of the patient's entities of `kind` that match
        `filters` (in the episode `episode_id`, when given), newest first; and how many match.
        A page past the last reads nothing but the count."""
        query = list_filter(kind, patient_id, filters, episode_id=episode_id)
        collection = self._db[kind.collection]
        total = await collection.count_documents(query)
        offset = (page - 1) * page_size
        if offset >= total:
            return [], total
        found = collection.find(query).sort(NEWEST_FIRST).skip(offset).limit(page_size)
        return await found.to_list(), total

    @unavailable_on_outage
    async def has_episode(self, patient_id: str, episode_id: str) -> bool:
        found = await self._db[EPISODE.collection].find_one(
            {"_id": episode_id, "patient_id": patient_id}, {"_id": 1}
        )
        return found is not None

    @unavailable_on_outage
    async def get_in_episode(
        self, kind: EntityKind, patient_id: str, episode_id: str, entity_id: str
    ) -> dict[str, Any] | None:
        """The patient's entity of `kind` with that id, if it was recorded in that episode."""
        return await self._db[kind.collection].find_one(
            {"_id": entity_id, "patient_id": patient_id, EPISODE_FIELD: episode_id}
        )

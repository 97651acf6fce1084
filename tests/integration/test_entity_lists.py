"""The read side an MIS uses: a patient's lists of entities (paged as eHealth pages, newest
first, with the original's filters kind by kind), the reads in an episode's context, their
422s, 403s and 404s; and every query those reads send served by a declared index."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from schemas.entity_queries import EPISODE_PARAMETERS, load_query, query_parameters
from service.cli.demo import DEMO_EPISODE, demo_episode
from service.domain.entities import (
    ALL_ENTITY_KINDS,
    DIAGNOSTIC_REPORT,
    EPISODE,
    KINDS_BY_COLLECTION,
    READABLE_KINDS,
)
from service.domain.jobs import VALIDATION_FAILED_MESSAGE
from service.signatures import encode_unsigned
from service.storage.entities import EntityStore
from service.storage.entity_reads import FILTERS, READ_INDEXES, EntityReads, Match
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, INACTIVE_PATIENT, example, package_content
from tests.harness import poll as poll_job

WRITE = bearer(
    client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write", "service_request:write")
)
READ_ALL = bearer(
    client_id=DEMO_CLIENT,
    scopes=("job:read", *(f"{kind.entity}:read" for kind in READABLE_KINDS)),
)
PATIENT = f"/api/patients/{ACTIVE_PATIENT}"
IN_DEMO_EPISODE = f"{PATIENT}/episodes/{DEMO_EPISODE}"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
UPPERCASE_ID = "0000000A-0000-4000-8000-00000000000B"
# The conditions' codes of the three packages, oldest first.
CODES = ("J11", "J12", "J11")


def _day(text: str) -> date:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).date()


async def _submit(api, submission: dict[str, Any]) -> None:
    response = await api.post(
        f"{PATIENT}/encounter_package", json=submission["data"], headers=WRITE
    )
    assert response.status == 202, await response.text()
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    _, body = await poll_job(api, job_id, WRITE)
    assert body["data"]["status"] == "processed", body


@pytest.fixture
async def packages(api, start_consumer) -> list[dict[str, Any]]:
    """Three example packages processed one after the other (the oldest first), their
    condition's code from `CODES` (the second's with a second coding, `A00`) and its onset one
    day earlier in each: their contents."""
    await start_consumer()
    contents = []
    for index, code in enumerate(CODES):
        submission = example("encounter_package")
        content = package_content(submission)
        condition = content["conditions"][0]
        condition["code"]["coding"][0]["code"] = code
        if index == 1:
            condition["code"]["coding"].append(
                {"system": "eHealth/ICD10/condition_codes", "code": "A00"}
            )
        onset = datetime.fromisoformat(condition["onset_date"].replace("Z", "+00:00"))
        condition["onset_date"] = (onset - timedelta(days=index)).isoformat()
        submission["data"]["signed_data"] = encode_unsigned(content)
        await _submit(api, submission)
        await _submit_service_request(api, content["encounter"]["id"])
        contents.append(content)
    return contents


async def _submit_service_request(api, encounter_id: str) -> None:
    """A service request in the package's encounter, so that every readable kind has some."""
    submission = example("service_request")
    content = package_content(submission)
    content["context"]["identifier"]["value"] = encounter_id
    response = await api.post(
        f"{PATIENT}/service_requests",
        json={"signed_data": encode_unsigned(content)},
        headers=WRITE,
    )
    assert response.status == 202, await response.text()
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    _, body = await poll_job(api, job_id, WRITE)
    assert body["data"]["status"] == "processed", body


async def _get(api, path: str, headers: dict[str, str] = READ_ALL, **query: Any):
    response = await api.get(path, params=query, headers=headers)
    return response.status, await response.json()


async def _ids(api, path: str, **query: Any) -> list[str]:
    status, body = await _get(api, path, **query)
    assert status == 200, body
    return [item["id"] for item in body["data"]]


# --- Paging and rendering ----------------------------------------------------------------------


async def test_a_list_pages_newest_first(api, packages) -> None:
    encounters = [content["encounter"]["id"] for content in reversed(packages)]
    conditions = [content["conditions"][0]["id"] for content in reversed(packages)]

    status, first = await _get(api, f"{PATIENT}/encounters", page_size=2)
    assert status == 200
    assert [item["id"] for item in first["data"]] == encounters[:2]
    assert first["paging"] == {
        "page_number": 1,
        "page_size": 2,
        "total_entries": 3,
        "total_pages": 2,
    }
    assert first["meta"]["code"] == 200 and first["meta"]["type"] == "list"
    assert first["meta"]["url"].endswith(f"{PATIENT}/encounters")
    assert first["meta"]["request_id"]

    status, second = await _get(api, f"{PATIENT}/encounters", page_size="2", page="2")
    assert [item["id"] for item in second["data"]] == encounters[2:]
    assert second["paging"] == {**first["paging"], "page_number": 2}

    status, past = await _get(api, f"{PATIENT}/encounters", page_size=2, page=3)
    assert status == 200 and past["data"] == []
    assert past["paging"] == {**first["paging"], "page_number": 3}

    status, default = await _get(api, f"{PATIENT}/conditions")
    assert [item["id"] for item in default["data"]] == conditions
    assert default["paging"] == {
        "page_number": 1,
        "page_size": 50,
        "total_entries": 3,
        "total_pages": 1,
    }


async def test_an_empty_list_has_no_pages(api, patients) -> None:
    status, body = await _get(api, f"/api/patients/{INACTIVE_PATIENT}/conditions")
    assert status == 200 and body["data"] == []
    assert body["paging"] == {
        "page_number": 1,
        "page_size": 50,
        "total_entries": 0,
        "total_pages": 0,
    }


async def test_each_item_is_what_the_single_read_renders(api, packages) -> None:
    for kind in READABLE_KINDS:
        status, page = await _get(api, f"{PATIENT}/{kind.collection}", page_size=300)
        assert status == 200, (kind, page)
        expected = 1 if kind is EPISODE else 3
        assert len(page["data"]) == expected == page["paging"]["total_entries"], kind
        for item in page["data"]:
            single = await _get(api, f"{PATIENT}/{kind.collection}/{item['id']}")
            assert single == (200, {"data": item, "meta": single[1]["meta"]}), kind


async def test_a_list_answers_304_to_its_etag(api, packages) -> None:
    path = f"{PATIENT}/conditions"
    first = await api.get(path, headers=READ_ALL)
    tag = first.headers["ETag"]
    again = await api.get(path, headers={**READ_ALL, "If-None-Match": tag})
    assert again.status == 304
    other_page = await api.get(
        path, params={"page": "2"}, headers={**READ_ALL, "If-None-Match": tag}
    )
    assert other_page.status == 200


# --- Filters -----------------------------------------------------------------------------------


async def test_the_filters_of_conditions(api, packages) -> None:
    ids = [content["conditions"][0]["id"] for content in packages]
    onsets = [_day(content["conditions"][0]["onset_date"]) for content in packages]
    path = f"{PATIENT}/conditions"

    assert await _ids(api, path, code="J11") == [ids[2], ids[0]]
    assert await _ids(api, path, code="J12") == [ids[1]]
    assert await _ids(api, path, code="A00") == [ids[1]]  # any of its codings
    assert await _ids(api, path, code="B00") == []

    encounter_id = packages[1]["encounter"]["id"]
    assert await _ids(api, path, encounter_id=encounter_id) == [ids[1]]
    assert await _ids(api, path, encounter_id=NO_SUCH_ID) == []
    assert await _ids(api, path, episode_id=DEMO_EPISODE) == ids[::-1]
    assert await _ids(api, path, episode_id=NO_SUCH_ID) == []

    # Inclusive days: the onsets are at midnight, one day apart (the newest package's first).
    assert await _ids(api, path, onset_date_from=onsets[1].isoformat()) == [ids[1], ids[0]]
    assert await _ids(api, path, onset_date_to=onsets[1].isoformat()) == [ids[2], ids[1]]
    both = {"onset_date_from": onsets[1].isoformat(), "onset_date_to": onsets[1].isoformat()}
    assert await _ids(api, path, **both) == [ids[1]]
    after = (onsets[0] + timedelta(days=1)).isoformat()
    assert await _ids(api, path, onset_date_from=after) == []
    assert await _ids(api, path, code="J11", onset_date_to=onsets[1].isoformat()) == [ids[2]]


async def test_the_filters_of_encounters(api, packages, db: AsyncDatabase) -> None:
    ids = [content["encounter"]["id"] for content in reversed(packages)]
    day = _day(packages[0]["encounter"]["date"])
    path = f"{PATIENT}/encounters"

    assert await _ids(api, path, date_from=day.isoformat()) == ids
    assert await _ids(api, path, date_to=day.isoformat()) == ids
    assert await _ids(api, path, date_from=day.isoformat(), date_to=day.isoformat()) == ids
    assert await _ids(api, path, date_from=(day + timedelta(days=1)).isoformat()) == []
    assert await _ids(api, path, date_to=(day - timedelta(days=1)).isoformat()) == []
    assert await _ids(api, path, date_to="9999-12-31") == ids

    assert await _ids(api, path, episode_id=DEMO_EPISODE) == ids
    assert await _ids(api, path, episode_id=NO_SUCH_ID) == []

    referral = str(uuid.uuid4())
    await db["encounters"].update_one(
        {"_id": ids[1]}, {"$set": {"incoming_referral": {"identifier": {"value": referral}}}}
    )
    assert await _ids(api, path, incoming_referral_id=referral) == [ids[1]]
    assert await _ids(api, path, incoming_referral_id=NO_SUCH_ID) == []


async def test_the_filters_of_the_other_kinds(api, packages) -> None:
    """Each kind's filters take what the package sent: its codes, report, service, days."""
    content = packages[1]
    day = _day(content["encounter"]["date"]).isoformat()
    encounter_id = content["encounter"]["id"]
    for key, query in (
        ("observations", {"code": content["observations"][0]["code"]["coding"][0]["code"]}),
        ("observations", {"issued_from": day, "issued_to": day}),
        (
            "observations",
            {"diagnostic_report_id": content["diagnostic_reports"][0]["id"]},
        ),
        ("immunizations", {"vaccine_code": "FLU", "date_from": day}),
        ("devices", {"type": "glucometer", "asserted_date_to": day}),
        ("medication_statements", {"medication_code": "paracetamol"}),
        ("medication_administrations", {"medication": "oseltamivir"}),
        ("procedures", {"code": "90471"}),
        ("risk_assessments", {"code": "R1", "asserted_date_from": day}),
        ("allergy_intolerances", {"code": "227493005"}),
        (
            "diagnostic_reports",
            {
                "code": content["diagnostic_reports"][0]["code"]["identifier"]["value"],
                "context_episode_id": DEMO_EPISODE,
                "issued_from": day,
                "issued_to": day,
            },
        ),
    ):
        found = await _ids(api, f"{PATIENT}/{key}", encounter_id=encounter_id, **query)
        assert found == [content[key][0]["id"]], (key, query)
    assert await _ids(api, f"{PATIENT}/diagnostic_reports", based_on=NO_SUCH_ID) == []
    assert await _ids(api, f"{PATIENT}/diagnostic_reports", origin_episode_id=NO_SUCH_ID) == []


async def test_the_filters_of_episodes(api, patients) -> None:
    path = f"{PATIENT}/episodes"
    start = demo_episode()["period"]["start"]
    before = (date.fromisoformat(start) - timedelta(days=1)).isoformat()
    assert await _ids(api, path) == [DEMO_EPISODE]
    for query, expected in (
        ({"code": "primary_care", "status": "active"}, [DEMO_EPISODE]),
        ({"status": "closed"}, []),
        ({"managing_organization_id": DEMO_CLIENT}, [DEMO_EPISODE]),
        ({"managing_organization_id": NO_SUCH_ID}, []),
        ({"period_from": start, "period_to": start}, [DEMO_EPISODE]),
        ({"period_to": before}, []),
    ):
        assert await _ids(api, path, **query) == expected, query


# --- Episode context ---------------------------------------------------------------------------


async def test_the_reads_in_an_episode_context(api, packages, db: AsyncDatabase) -> None:
    other = {**demo_episode(), "_id": str(uuid.uuid4())}
    await EntityStore(db).put_episode(other)
    for kind in ALL_ENTITY_KINDS:
        everything = await _ids(api, f"{PATIENT}/{kind.collection}")
        assert await _ids(api, f"{IN_DEMO_EPISODE}/{kind.collection}") == everything, kind
        in_other = f"{PATIENT}/episodes/{other['_id']}/{kind.collection}"
        assert await _ids(api, in_other) == [], kind
        status, single = await _get(api, f"{IN_DEMO_EPISODE}/{kind.collection}/{everything[0]}")
        assert status == 200
        assert (
            single["data"]
            == (await _get(api, f"{PATIENT}/{kind.collection}/{everything[0]}"))[1]["data"]
        )
        status, missing = await _get(api, f"{in_other}/{everything[0]}")
        assert status == 404 and missing["error"]["message"] == f"{kind.title} not found"

    # Paged and filtered as the patient's list, the episode being the path's.
    status, page = await _get(api, f"{IN_DEMO_EPISODE}/conditions", page_size=1, code="J11")
    assert page["paging"]["total_entries"] == 2 and page["paging"]["total_pages"] == 2
    assert [item["id"] for item in page["data"]] == [packages[2]["conditions"][0]["id"]]
    for collection, parameter in (
        ("conditions", "episode_id"),
        ("diagnostic_reports", "context_episode_id"),
    ):
        status, body = await _get(
            api, f"{IN_DEMO_EPISODE}/{collection}", **{parameter: DEMO_EPISODE}
        )
        assert status == 422
        assert body["error"]["invalid"][0]["entry"] == f"$.{parameter}"
        assert body["error"]["invalid"][0]["rules"][0]["rule"] == "schema"


async def test_an_unknown_episode_is_not_found(api, packages) -> None:
    condition = packages[0]["conditions"][0]["id"]
    for path in (
        f"{PATIENT}/episodes/{NO_SUCH_ID}/conditions",
        f"{PATIENT}/episodes/{NO_SUCH_ID}/conditions/{condition}",
        f"{PATIENT}/episodes/not-a-uuid/conditions",
        f"/api/patients/{INACTIVE_PATIENT}/episodes/{DEMO_EPISODE}/conditions",  # another's
        f"/api/patients/{INACTIVE_PATIENT}/episodes/{DEMO_EPISODE}/conditions/{condition}",
    ):
        status, body = await _get(api, path)
        assert status == 404, path
        assert body["error"] == {"type": "not_found", "message": "Episode not found"}, path


async def test_unknown_collections_and_patients_are_not_found(api, patients) -> None:
    for path in (
        f"{PATIENT}/nothings",
        f"{PATIENT}/visits",
        f"{IN_DEMO_EPISODE}/episodes",
        f"{IN_DEMO_EPISODE}/visits/{NO_SUCH_ID}",
        "/api/patients/not-a-uuid/conditions",
    ):
        status, body = await _get(api, path)
        assert status == 404, path
        assert body["error"]["type"] == "not_found"
    # A submission's path is not a list: GET there is still not allowed.
    response = await api.get(f"{PATIENT}/encounter_package", headers=READ_ALL)
    assert response.status == 405


# --- Scopes and bad parameters ------------------------------------------------------------------


async def test_the_lists_need_the_scope_of_their_kind(api, patients) -> None:
    only_encounters = bearer(client_id=DEMO_CLIENT, scopes=("encounter:read",))
    for path, missing in (
        (f"{PATIENT}/conditions", "condition:read"),
        (f"{PATIENT}/episodes", "episode:read"),
        (f"{IN_DEMO_EPISODE}/conditions", "condition:read"),
        (f"{IN_DEMO_EPISODE}/conditions/{NO_SUCH_ID}", "condition:read"),
    ):
        status, body = await _get(api, path, headers=only_encounters)
        assert status == 403, path
        assert body["error"]["message"].endswith(f"Missing allowances: {missing}")
    status, _ = await _get(api, f"{PATIENT}/encounters", headers=only_encounters)
    assert status == 200
    status, _ = await _get(api, f"{IN_DEMO_EPISODE}/encounters", headers=only_encounters)
    assert status == 200
    response = await api.get(f"{PATIENT}/encounters")
    assert response.status == 401


@pytest.mark.parametrize(
    ("query", "entry", "rule", "params"),
    [
        ({"colour": "red"}, "$.colour", "schema", {"colour": "red"}),
        ({"encounter_id": "not-a-uuid"}, "$.encounter_id", "format", None),
        ({"encounter_id": UPPERCASE_ID}, "$.encounter_id", "format", None),
        ({"onset_date_from": "2026-13-01"}, "$.onset_date_from", "date", None),
        ({"onset_date_to": "2026-02-30"}, "$.onset_date_to", "date", []),
        ({"onset_date_to": "yesterday"}, "$.onset_date_to", "date", None),
        ({"page": "first"}, "$.page", "cast", ["integer"]),
        ({"page": "1.5"}, "$.page", "cast", ["integer"]),
        ({"page": "0"}, "$.page", "number", {"greater_than_or_equal_to": 1}),
        ({"page_size": "0"}, "$.page_size", "number", {"greater_than_or_equal_to": 1}),
        ({"page_size": "301"}, "$.page_size", "number", {"less_than_or_equal_to": 300}),
        ({"page": str(2**63)}, "$.page", "number", {"less_than_or_equal_to": 2**63 - 1}),
    ],
)
async def test_bad_parameters_are_a_422(api, patients, query, entry, rule, params) -> None:
    status, body = await _get(api, f"{PATIENT}/conditions", **query)
    assert status == 422
    assert body["meta"]["code"] == 422
    error = body["error"]
    assert error["type"] == "validation_failed"
    assert error["message"] == VALIDATION_FAILED_MESSAGE
    [found] = error["invalid"]
    assert found["entry_type"] == "json_data_property" and found["entry"] == entry
    assert found["rules"][0]["rule"] == rule
    if params is not None:
        assert found["rules"][0]["params"] == params


async def test_every_error_at_once_and_a_parameter_given_twice(api, patients) -> None:
    response = await api.get(
        f"{PATIENT}/conditions?code=J11&code=J12&page=x&status=active&episode_id=1",
        headers=READ_ALL,
    )
    body = await response.json()
    assert response.status == 422
    rules = {entry["entry"]: entry["rules"][0]["rule"] for entry in body["error"]["invalid"]}
    assert rules == {
        "$.code": "unique",
        "$.page": "cast",
        "$.status": "schema",
        "$.episode_id": "format",
    }


# --- The schemas and the storage agree; every query is served by a declared index --------------


def test_every_parameter_has_its_filter() -> None:
    for kind in READABLE_KINDS:
        assert set(query_parameters(kind)) == set(FILTERS[kind]), kind
    for kind in ALL_ENTITY_KINDS:
        in_episode = set(query_parameters(kind, in_episode=True))
        assert in_episode == set(FILTERS[kind]) - {EPISODE_PARAMETERS[kind]}, kind
        assert FILTERS[kind][EPISODE_PARAMETERS[kind]].path == "episode_id"
    assert EPISODE_PARAMETERS[DIAGNOSTIC_REPORT] == "context_episode_id"


class _Commands(monitoring.CommandListener):
    """The reads a client sends: (command name, command)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in {"find", "count", "aggregate"}:
            self.seen.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _filter_and_sort(name: str, command: dict[str, Any]) -> tuple[dict, list[tuple[str, int]]]:
    if name == "find":
        return command.get("filter", {}), list(command.get("sort", {}).items())
    if name == "count":
        return command.get("query", {}), []
    stages = command["pipeline"]
    match = next((stage["$match"] for stage in stages if "$match" in stage), {})
    sort = next((stage["$sort"] for stage in stages if "$sort" in stage), {})
    return match, list(sort.items())


def _served(query: dict[str, Any], sort: list[tuple[str, int]], indexes: list) -> bool:
    """Whether an index starts with equality fields of `query` and then, if there is a sort,
    follows it (all in its directions, or all reversed)."""
    equal = {
        field
        for field, condition in query.items()
        if not (isinstance(condition, dict) and any(key.startswith("$") for key in condition))
    }
    for keys in indexes:
        prefix = 0
        while prefix < len(keys) and keys[prefix][0] in equal:
            prefix += 1
        if prefix == 0:
            continue
        following = keys[prefix : prefix + len(sort)]
        if [name for name, _ in following] != [name for name, _ in sort]:
            continue
        same = [direction for _, direction in following] == [d for _, d in sort]
        reversed_ = [-direction for _, direction in following] == [d for _, d in sort]
        if same or reversed_:
            return True
    return False


def _value_at(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _parameter_value(document: dict[str, Any], name: str, kind) -> str:
    """A value of parameter `name` that the document matches, when it has the field."""
    declared = FILTERS[kind][name]
    value = _value_at(document, declared.path)
    if value is None:
        return NO_SUCH_ID
    if declared.match is Match.EQUALS:
        return value
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value)[:10]


async def test_every_read_is_served_by_a_declared_index(
    api, packages, settings, db: AsyncDatabase
) -> None:
    commands = _Commands()
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    reads = EntityReads(client[settings.mongodb_db])
    try:
        for kind in READABLE_KINDS:
            document = await db[kind.collection].find_one({"patient_id": ACTIVE_PATIENT})
            assert document is not None, kind
            contexts = [False, True] if kind in ALL_ENTITY_KINDS else [False]
            for in_episode in contexts:
                names = query_parameters(kind, in_episode=in_episode)
                values = {name: _parameter_value(document, name, kind) for name in names}
                episode_id = DEMO_EPISODE if in_episode else None
                for asked in [{}, *({name: value} for name, value in values.items()), values]:
                    query = load_query(kind, asked.items(), in_episode=in_episode)
                    found, total = await reads.page(
                        kind, ACTIVE_PATIENT, query.filters, 1, 2, episode_id=episode_id
                    )
                    if all(value != NO_SUCH_ID for value in asked.values()):
                        assert total >= 1 and found, (kind, asked)  # what it was taken from
            if kind in ALL_ENTITY_KINDS:
                assert await reads.get_in_episode(
                    kind, ACTIVE_PATIENT, DEMO_EPISODE, document["_id"]
                )
        assert await reads.has_episode(ACTIVE_PATIENT, DEMO_EPISODE)
        assert not await reads.has_episode(ACTIVE_PATIENT, NO_SUCH_ID)
    finally:
        await client.close()

    finds = [name for name, _ in commands.seen if name == "find"]
    assert len(finds) > 100 and len(commands.seen) > 200
    for name, command in commands.seen:
        collection = command[name]
        kind = KINDS_BY_COLLECTION[collection]
        query, sort = _filter_and_sort(name, command)
        indexes = [*READ_INDEXES[kind], [("_id", 1)]]
        assert _served(query, sort, indexes), (collection, query, sort)


async def test_the_declared_indexes_are_created(api, db: AsyncDatabase) -> None:
    """The app creates them at start (only the test server's leave out `_id`, which it
    cannot index beside other keys)."""
    info = await db.client.admin.command("buildInfo")
    test_server = info.get("process") == "nx_27017"

    def compared(keys: list[tuple[str, int]]) -> tuple:
        if not test_server:
            return tuple(keys)
        # The test server lists every key ascending.
        return tuple(name for name, _ in keys if name != "_id")

    for kind, declared in READ_INDEXES.items():
        listed = await db[kind.collection].list_indexes()
        created = {compared(list(index["key"].items())) async for index in listed}
        for keys in declared:
            assert compared(keys) in created, (kind, keys)

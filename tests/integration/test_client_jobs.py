"""A client's own jobs (`GET /api/jobs`) and the cancel of a pending one
(`POST /api/jobs/{id}/actions/cancel`), against the real broker and database: isolation
between clients (page tokens and forged tokens included), each filter, paging, the 422s, the
items rendered as `GET /api/jobs/{id}` renders its `data`, the index behind every query, the
cancel's answers, the long polls a cancel wakes in every API process, and a cancel racing a
consumer that processes the same job."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
from schemas.job_queries import page_token
from schemas.jobs import JOB_RESPONSE_FIELDS
from service.api.keys import JOB_SERVICE
from service.config import Settings
from service.domain.jobs import JobOutcome, JobQuery, JobStatus, Link
from service.messaging.broker import Topology
from service.messaging.job_queue import JobQueue
from service.signatures import Base64JsonDecoder
from service.storage.entities import WRITTEN_KINDS, EntityStore
from service.storage.jobs import CLIENT_LIST_INDEXES, JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import SubmissionProcessor
from tests.conftest import bearer, new_job
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, package_entity_count
from tests.integration.conftest import app_for

CLIENT_A, CLIENT_B = DEMO_CLIENT, "mis-client-b"
READ_A, READ_B = bearer(client_id=CLIENT_A), bearer(client_id=CLIENT_B)
WRITE_A = bearer(client_id=CLIENT_A, scopes=("job:read", "encounter:write"))
WRITE_B = bearer(client_id=CLIENT_B, scopes=("job:read", "encounter:write"))
ENCOUNTER = "encounter_package.create"
EPISODE = "episode.create"
CANCELLED_ERROR = {"type": "cancelled", "message": "The job was cancelled by its client"}

OUTCOMES = {
    "processed": JobOutcome.processed([Link("encounter", "/api/patients/p/encounters/e")]),
    "failed_422": JobOutcome.validation_failed(
        [{"entry": "$.x", "entry_type": "json_data_property", "rules": []}]
    ),
    "failed_403": JobOutcome.failed(403, "forbidden", "Your scope does not allow it"),
    "failed_404": JobOutcome.failed(404, "not_found", "Patient not found"),
    "failed_409": JobOutcome.failed(409, "request_conflict", "Person is not active"),
    "cancelled": JobOutcome.cancelled(),
    "failed_with_error": JobOutcome.failed_with_error("boom"),
}


async def seed(
    store: JobStore, client_id: str, outcome: str | None = None, job_type: str = ENCOUNTER
) -> str:
    """A job of `client_id`, pending or ended with one of `OUTCOMES`; its id."""
    job = new_job(client_id=client_id, type=job_type)
    await store.create_pending(job)
    if outcome is not None:
        assert await store.finish(job.job_id, OUTCOMES[outcome])
    await asyncio.sleep(0.002)  # a distinct millisecond: the order is the insertion order
    return job.job_id


async def listed(api, headers: dict, query: str = "") -> tuple[int, dict]:
    response = await api.get(f"/api/jobs{query}", headers=headers)
    return response.status, await response.json()


async def all_pages(api, headers: dict, query: str, limit: int) -> tuple[list[str], int]:
    """Every id, page after page, and how many pages it took."""
    ids: list[str] = []
    token, pages = None, 0
    separator = "&" if query else ""
    while True:
        asked = f"?{query}{separator}limit={limit}" + (f"&page_token={token}" if token else "")
        status, body = await listed(api, headers, asked)
        assert status == 200, body
        assert len(body["data"]) <= limit and body["paging"]["limit"] == limit
        ids += [item["id"] for item in body["data"]]
        pages += 1
        token = body["paging"]["next_page_token"]
        if token is None:
            return ids, pages


def newest_first(jobs: dict[str, dict]) -> list[str]:
    return [job["_id"] for job in sorted(jobs.values(), key=lambda j: j["order_key"])][::-1]


async def stored(db: AsyncDatabase, client_id: str) -> dict[str, dict]:
    return {job["_id"]: job async for job in db["jobs"].find({"client_id": client_id})}


# --- The list ------------------------------------------------------------------------------------


async def test_each_client_pages_through_its_own_jobs_alone_newest_first(api, store, db) -> None:
    for index in range(23):
        await seed(store, CLIENT_A if index % 3 else CLIENT_B, "processed" if index % 2 else None)
    jobs_a, jobs_b = await stored(db, CLIENT_A), await stored(db, CLIENT_B)
    assert len(jobs_a) == 15 and len(jobs_b) == 8

    ids_a, pages_a = await all_pages(api, READ_A, "", 4)
    ids_b, pages_b = await all_pages(api, READ_B, "", 3)
    # Every job once, newest first, none of the other client's, over several pages.
    assert ids_a == newest_first(jobs_a) and pages_a == 4
    assert ids_b == newest_first(jobs_b) and pages_b == 3
    # The default limit, and the envelope.
    status, body = await listed(api, READ_A)
    assert status == 200 and list(body) == ["meta", "data", "paging"]
    assert body["meta"]["type"] == "list" and body["meta"]["code"] == 200
    assert body["paging"] == {"limit": 20, "next_page_token": None}
    assert [item["id"] for item in body["data"]] == ids_a
    # A client with no job.
    status, body = await listed(api, bearer(client_id="nobody"))
    assert status == 200 and body["data"] == [] and body["paging"]["next_page_token"] is None


async def test_a_page_token_works_only_for_its_client_and_filters(api, store, db) -> None:
    for index in range(6):
        await seed(store, CLIENT_A, None if index % 2 else "processed")
        await seed(store, CLIENT_B)
    status, first = await listed(api, READ_A, "?limit=2")
    token = first["paging"]["next_page_token"]
    assert status == 200 and token
    # Opaque: neither the client nor anything readable in the token.
    assert CLIENT_A not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(
        "latin-1"
    )

    def refused(body: dict) -> bool:
        entries = body["error"]["invalid"]
        return body["error"]["type"] == "validation_failed" and [
            entry["entry"] for entry in entries
        ] == ["$.page_token"]

    # Another client's token, or the same with other filters: 422 naming `page_token`.
    for headers, query in [
        (READ_B, f"?page_token={token}&limit=2"),
        (READ_A, f"?page_token={token}&status=pending"),
        (READ_A, f"?page_token={token}&type={ENCOUNTER}"),
        (READ_A, f"?page_token={token}&since=2020-01-01T00:00:00Z"),
    ]:
        status, body = await listed(api, headers, query)
        assert status == 422 and refused(body), (query, body)
    # The same filters and another limit: the next page.
    status, body = await listed(api, READ_A, f"?page_token={token}&limit=3")
    assert status == 200 and len(body["data"]) == 3
    # Not ours at all: the operators' cursor, garbage, a truncated token, the digest altered.
    jobs_a = newest_first(await stored(db, CLIENT_A))
    admin_cursor = base64.urlsafe_b64encode(
        (await db["jobs"].find_one({"_id": jobs_a[1]}))["order_key"].encode()
    ).decode()
    altered = ("A" if token[0] != "A" else "B") + token[1:]
    for bad in [admin_cursor.rstrip("="), "not-a-token", token[:10], altered, "%00", "x" * 500]:
        status, body = await listed(api, READ_A, f"?page_token={bad}")
        assert status == 422 and refused(body), (bad, body)

    # A token forged by B for its own list from A's cursor (the digest is no secret): it only
    # moves B's cursor, among B's jobs; A's jobs never come back.
    after = (await db["jobs"].find_one({"_id": jobs_a[1]}))["order_key"]
    forged = page_token(CLIENT_B, JobQuery(limit=20), after)
    status, body = await listed(api, READ_B, f"?page_token={forged}")
    assert status == 200
    jobs_b = await stored(db, CLIENT_B)
    expected = [job_id for job_id in newest_first(jobs_b) if jobs_b[job_id]["order_key"] < after]
    assert [item["id"] for item in body["data"]] == expected and expected
    assert not {item["id"] for item in body["data"]} & set(jobs_a)


async def test_each_filter(api, store, db) -> None:
    by_outcome: dict[str | None, list[str]] = {}
    for outcome in [None, "processed", "failed_422", "cancelled", "failed_with_error", None]:
        by_outcome.setdefault(outcome, []).append(await seed(store, CLIENT_A, outcome))
    episode_job = await seed(store, CLIENT_A, "processed", job_type=EPISODE)
    await seed(store, CLIENT_B, "processed", job_type=EPISODE)
    jobs = await stored(db, CLIENT_A)

    async def ids(query: str) -> list[str]:
        status, body = await listed(api, READ_A, query)
        assert status == 200, body
        return [item["id"] for item in body["data"]]

    order = newest_first(jobs)
    for label, status in [(s.label, s) for s in JobStatus]:
        expected = [job_id for job_id in order if jobs[job_id]["status"] == status]
        assert await ids(f"?status={label}") == expected and expected, label
    assert await ids(f"?type={EPISODE}") == [episode_job]
    assert await ids(f"?type={ENCOUNTER}&status=processed") == by_outcome["processed"]
    assert await ids(f"?type={EPISODE}&status=pending") == []

    # `since`: inserted at that instant or later, to the millisecond, whatever the offset.
    third = jobs[order[2]]
    at = third["inserted_at"].astimezone(UTC)
    later = order[: order.index(third["_id"]) + 1]
    for text in [
        at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "%2B00:00",
        (at + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{at.microsecond // 1000:03d}%2B02:00",
        # A `+` not percent-encoded arrives as a space: read as the `+` it was.
        (at + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{at.microsecond // 1000:03d}+02:00",
    ]:
        assert await ids(f"?since={text}") == later, text
    one_ms_after = at + timedelta(milliseconds=1)
    text = one_ms_after.strftime("%Y-%m-%dT%H:%M:%S.") + f"{one_ms_after.microsecond // 1000:03d}Z"
    assert await ids(f"?since={text}") == later[:-1]
    assert await ids("?since=2999-01-01T00:00:00Z") == []
    assert await ids("?since=2000-01-01T00:00:00-05:00") == order
    # Filters through pages.
    assert (await all_pages(api, READ_A, "status=pending", 1))[0] == by_outcome[None][::-1]


@pytest.mark.parametrize(
    ("query", "entry", "rule"),
    [
        ("?status=done", "$.status", "inclusion"),
        ("?status=", "$.status", "inclusion"),
        ("?type=no.such_type", "$.type", "inclusion"),
        ("?limit=0", "$.limit", "number"),
        ("?limit=101", "$.limit", "number"),
        ("?limit=-1", "$.limit", "number"),
        ("?limit=ten", "$.limit", "cast"),
        ("?limit=1.5", "$.limit", "cast"),
        ("?since=yesterday", "$.since", "datetime"),
        ("?since=2024-01-01", "$.since", "datetime"),
        ("?since=2024-01-01T10:00:00", "$.since", "datetime"),  # no offset
        ("?since=2024-02-30T10:00:00Z", "$.since", "datetime"),
        ("?page_token=abc", "$.page_token", "invalid"),
        ("?client_id=mis-client-b", "$.client_id", "schema"),
        ("?limit=5&limit=6", "$.limit", "unique"),
        ("?page=2", "$.page", "schema"),
    ],
)
async def test_a_bad_parameter_is_a_422_naming_it(api, query, entry, rule) -> None:
    status, body = await listed(api, READ_A, query)
    assert status == 422, body
    assert body["error"]["type"] == "validation_failed" and body["meta"]["code"] == 422
    assert [(e["entry"], e["rules"][0]["rule"]) for e in body["error"]["invalid"]] == [
        (entry, rule)
    ]


async def test_every_error_at_once(api) -> None:
    status, body = await listed(api, READ_A, "?status=x&limit=0&since=no&page_token=%21")
    assert status == 422
    assert {e["entry"] for e in body["error"]["invalid"]} == {
        "$.status",
        "$.limit",
        "$.since",
        "$.page_token",
    }


async def test_the_list_needs_job_read(api) -> None:
    response = await api.get("/api/jobs")
    assert response.status == 401
    response = await api.get("/api/jobs", headers=bearer(scopes=("encounter:write",)))
    body = await response.json()
    assert response.status == 403 and body["error"]["message"].endswith("job:read")


async def test_each_item_is_what_a_poll_renders_with_its_id_and_type_first(api, store) -> None:
    ids = {outcome: await seed(store, CLIENT_A, outcome) for outcome in OUTCOMES}
    ids["pending"] = await seed(store, CLIENT_A)
    status, body = await listed(api, READ_A)
    assert status == 200 and len(body["data"]) == len(ids)
    items = {item["id"]: item for item in body["data"]}
    for outcome, job_id in ids.items():
        item = items[job_id]
        assert list(item)[:2] == ["id", "type"] and item["type"] == ENCOUNTER
        response = await api.get(f"/api/jobs/{job_id}", headers=READ_A, allow_redirects=False)
        data = (await response.json())["data"]
        assert {key: value for key, value in item.items() if key not in ("id", "type")} == data
        assert list(item)[2:] == list(data), outcome  # the same keys, in the same order
    assert items[ids["cancelled"]]["error"] == CANCELLED_ERROR
    assert items[ids["cancelled"]]["status_code"] == "499"


# --- The indexes ---------------------------------------------------------------------------------


class _Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "jobs":
            self.seen.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _served(query: dict[str, Any], sort: list[tuple[str, int]], indexes) -> list[Any]:
    """The indexes that start with equality fields of `query`, cover all of them but at most
    one, and then follow the sort (in its direction or reversed). Every equality field but
    one in the index: a filter on status and type reads one of the two from the documents."""
    equal = {
        name
        for name, condition in query.items()
        if not (isinstance(condition, dict) and any(key.startswith("$") for key in condition))
    }
    served = []
    for keys in indexes:
        prefix = 0
        while prefix < len(keys) and keys[prefix][0] in equal:
            prefix += 1
        following = keys[prefix : prefix + len(sort)]
        if prefix == 0 or len(equal) - prefix > 1:
            continue
        if [name for name, _ in following] != [name for name, _ in sort]:
            continue
        directions = [direction for _, direction in following]
        if directions in ([d for _, d in sort], [-d for _, d in sort]):
            served.append(keys)
    return served


async def test_every_list_query_is_served_by_an_index(api, settings: Settings, db) -> None:
    listener = _Finds()
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongodb_url, tz_aware=True, event_listeners=[listener]
    )
    store = JobStore(client[settings.mongodb_db], read_fields=JOB_RESPONSE_FIELDS)
    try:
        await store.ensure_indexes()
        for index in range(5):
            await seed(store, CLIENT_A, "processed" if index % 2 else None)
        since = datetime.now(UTC) - timedelta(hours=1)
        listener.seen.clear()
        for status in [None, *JobStatus]:
            for job_type in [None, ENCOUNTER]:
                for since_ in [None, since]:
                    query = JobQuery(
                        status=status, type=job_type, since=since_, client_id=CLIENT_A, limit=2
                    )
                    page = await store.list_for_client(query)
                    await store.list_for_client(
                        JobQuery(
                            status=status,
                            type=job_type,
                            since=since_,
                            client_id=CLIENT_A,
                            after=page[-1]["order_key"] if page else None,
                        )
                    )
        with pytest.raises(ValueError):
            await store.list_for_client(JobQuery())
    finally:
        await client.close()
    assert len(listener.seen) == 40
    for command in listener.seen:
        query, sort = command["filter"], list(command["sort"].items())
        assert query["client_id"] == CLIENT_A and sort == [("order_key", -1)]
        assert _served(query, sort, CLIENT_LIST_INDEXES), query
    # The app created them (the test server reports every key ascending: names only there).
    test_server = (await db.client.admin.command("buildInfo")).get("process") == "nx_27017"
    found = [
        [(name, 1 if test_server else direction) for name, direction in info["key"]]
        for info in (await db["jobs"].index_information()).values()
    ]
    for index in CLIENT_LIST_INDEXES:
        assert [(name, 1 if test_server else d) for name, d in index] in found, index


# --- The cancel ----------------------------------------------------------------------------------


async def cancel(api, job_id: str, headers: dict, **kwargs: Any):
    response = await api.post(f"/api/jobs/{job_id}/actions/cancel", headers=headers, **kwargs)
    return response.status, await response.json()


async def test_a_pending_job_is_cancelled_once(api, store, db) -> None:
    ended: list[dict] = []

    async def on_job_ended(job: dict) -> None:
        ended.append(job)

    api.app[JOB_SERVICE].on_job_ended = on_job_ended
    job_id = await seed(store, CLIENT_A)
    status, body = await cancel(api, job_id, WRITE_A)
    assert status == 200 and body["meta"]["code"] == 200
    assert body["data"]["status"] == "failed" and body["data"]["status_code"] == "499"
    assert body["data"]["error"] == CANCELLED_ERROR
    # What a poll answers from now on, byte for byte the same `data`.
    response = await api.get(f"/api/jobs/{job_id}", headers=READ_A)
    assert response.status == 200 and (await response.json())["data"] == body["data"]
    job = await db["jobs"].find_one({"_id": job_id})
    assert job["status"] == JobStatus.FAILED and job["status_code"] == 499
    assert "pending_key" not in job
    assert [(j["_id"], j["status_code"], j["client_id"]) for j in ended] == [
        (job_id, 499, CLIENT_A)
    ]
    # Once finished: 409 in the error envelope, and nothing changes.
    status, body = await cancel(api, job_id, WRITE_A)
    assert status == 409
    assert body["error"] == {"type": "request_conflict", "message": "The job has already finished"}
    assert body["meta"]["code"] == 409 and len(ended) == 1
    assert await db["jobs"].find_one({"_id": job_id}) == job


async def test_a_finished_job_is_not_cancelled(api, store, db) -> None:
    for outcome in ["processed", "failed_422", "failed_with_error"]:
        job_id = await seed(store, CLIENT_A, outcome)
        before = await db["jobs"].find_one({"_id": job_id})
        status, body = await cancel(api, job_id, WRITE_A)
        assert status == 409 and body["error"]["message"] == "The job has already finished"
        assert await db["jobs"].find_one({"_id": job_id}) == before


async def test_only_its_client_cancels_a_job(api, store, db) -> None:
    job_id = await seed(store, CLIENT_A)
    for unknown in [job_id, "NoSuchJob0000000000000", "bad.id", "x" * 65]:
        status, body = await cancel(api, unknown, WRITE_B)
        assert status == 404, unknown
        assert body["error"] == {"type": "not_found", "message": "Job not found"}
    assert (await db["jobs"].find_one({"_id": job_id}))["status"] == JobStatus.PENDING


async def test_the_scope_of_its_type_is_needed(api, store, db) -> None:
    job_id = await seed(store, CLIENT_A)
    status, body = await cancel(api, job_id, READ_A)  # job:read alone
    assert status == 403 and body["error"]["type"] == "forbidden"
    assert body["error"]["message"].endswith("Missing allowances: encounter:write")
    status, body = await cancel(
        api, job_id, bearer(client_id=CLIENT_A, scopes=("encounter:write",))
    )
    assert status == 403 and body["error"]["message"].endswith("Missing allowances: job:read")
    assert (await api.post(f"/api/jobs/{job_id}/actions/cancel")).status == 401
    # Another type, another scope.
    episode_job = await seed(store, CLIENT_A, job_type=EPISODE)
    status, body = await cancel(api, episode_job, WRITE_A)
    assert status == 403 and body["error"]["message"].endswith("episode:write")
    status, _ = await cancel(
        api, episode_job, bearer(client_id=CLIENT_A, scopes=("job:read", "episode:write"))
    )
    assert status == 200
    # A type the service does not know (a producer named it): only with jobs:admin.
    unknown_type = await seed(store, CLIENT_A, job_type="no.such_type")
    status, body = await cancel(api, unknown_type, WRITE_A)
    assert status == 403 and body["error"]["message"].endswith("jobs:admin")
    admin = bearer(client_id=CLIENT_A, scopes=("job:read", "jobs:admin"))
    assert (await cancel(api, unknown_type, admin))[0] == 200
    # Still pending after every refusal.
    assert (await db["jobs"].find_one({"_id": job_id}))["status"] == JobStatus.PENDING
    # 404 before 403: another client's job is not there, whatever the scope.
    status, _ = await cancel(api, job_id, READ_B)
    assert status == 404


async def test_the_body_is_nothing_or_an_empty_object(api, store) -> None:
    job_id = await seed(store, CLIENT_A)
    status, body = await cancel(api, job_id, WRITE_A, json={"reason": "x"})
    assert status == 422 and [e["entry"] for e in body["error"]["invalid"]] == ["$.reason"]
    status, _ = await cancel(api, job_id, WRITE_A, data=b"[1")
    assert status == 422
    assert (await cancel(api, job_id, WRITE_A, json={}))[0] == 200
    other = await seed(store, CLIENT_A)
    assert (await cancel(api, other, WRITE_A))[0] == 200  # no body at all


async def test_a_cancel_wakes_the_long_polls_in_every_api_process(
    api, aiohttp_client, settings, store
) -> None:
    other_api = await aiohttp_client(app_for(settings))
    job_id = await seed(store, CLIENT_A)
    polls = [
        asyncio.create_task(client.get(f"/api/jobs/{job_id}?wait=20", headers=READ_A))
        for client in (api, other_api, other_api)
    ]
    await asyncio.sleep(0.5)  # the requests are waiting
    assert not any(poll.done() for poll in polls)
    started = time.monotonic()
    status, _ = await cancel(api, job_id, WRITE_A)
    assert status == 200
    answers = await asyncio.gather(*polls)
    elapsed = time.monotonic() - started
    for answer in answers:
        body = await answer.json()
        assert answer.status == 200 and body["data"]["status_code"] == "499"
    assert elapsed < 2, elapsed  # woken, not answered at the end of their 20 s


# --- The race ------------------------------------------------------------------------------------


class _SlowEntities(EntityStore):
    """Entity writes that take `delay` seconds each, remembering which jobs wrote."""

    delay = 0.0

    def __init__(self, db: AsyncDatabase) -> None:
        super().__init__(db)
        self.wrote: set[str] = set()

    async def insert(self, kind, documents, job_id):
        taken = await super().insert(kind, documents, job_id)
        if documents:
            self.wrote.add(job_id)
        await asyncio.sleep(self.delay)
        return taken


class _SlowJobs(JobStore):
    """The consumer's job store, its final write `delay` seconds late."""

    delay = 0.0

    async def finish(self, job_id, outcome, *, count_attempt=True):
        await asyncio.sleep(self.delay)
        return await super().finish(job_id, outcome, count_attempt=count_attempt)


class _Watched(SubmissionProcessor):
    """Takes each delivery `accept_delay` seconds late, and says when its `complete` is over
    (its writes removed, if it lost)."""

    accept_delay = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done: dict[str, asyncio.Event] = {}

    async def accept(self, delivery, parsed):
        await asyncio.sleep(self.accept_delay)
        return await super().accept(delivery, parsed)

    async def complete(self, job, parsed, data_root=None):
        try:
            return await super().complete(job, parsed, data_root)
        finally:
            self.done.setdefault(job["_id"], asyncio.Event()).set()


ATTEMPTS = 60


@pytest.mark.timeout(240)
async def test_a_cancel_racing_the_consumer_leaves_the_job_whole_either_way(
    api, settings, db, patients
) -> None:
    entities = _SlowEntities(db)
    await entities.ensure_indexes()
    jobs = _SlowJobs(db)
    processor = _Watched(
        jobs,
        entities,
        PatientStore(db),
        builtin_registry(),
        registries=RegistryStore(db),
        signatures=Base64JsonDecoder(),
    )
    consumer = JobConsumer(
        JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8), processor
    )
    await consumer.start()
    counts = {"processed, cancel 409": 0, "cancelled before writing": 0}
    counts["cancelled while writing (removed)"] = 0
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    try:
        for attempt in range(ATTEMPTS):
            # The delivery taken late or not, its writes slowed differently, its final write
            # late or not, the cancel sent at a different moment each time: before the
            # delivery reads the job, during its writes, after its final write.
            processor.accept_delay = 0.08 if attempt % 4 == 0 else 0.0
            entities.delay = (0.0, 0.004, 0.012)[attempt % 3]
            jobs.delay = (0.0, 0.03)[attempt // 3 % 2]
            cancel_after = (attempt // 6) * 0.02
            submission = example("encounter_package")
            response = await api.post(url, json=submission["data"], headers=WRITE_A)
            assert response.status == 202
            job_id = (await response.json())["data"]["links"][0]["href"].rsplit("/", 1)[-1]
            await asyncio.sleep(cancel_after)
            status, body = await cancel(api, job_id, WRITE_A)
            done = processor.done.setdefault(job_id, asyncio.Event())
            await asyncio.wait_for(done.wait(), 30)
            job = await db["jobs"].find_one({"_id": job_id})
            written = {
                kind.collection: await db[kind.collection].count_documents({"job_id": job_id})
                for kind in WRITTEN_KINDS
            }
            if status == 409:
                assert body["error"]["message"] == "The job has already finished"
                assert job["status"] == JobStatus.PROCESSED, (attempt, job)
                # Whole: every entity of the package, as many as it holds.
                for collection, count in package_entity_count(submission).items():
                    assert written[collection] == count, (attempt, collection, written)
                counts["processed, cancel 409"] += 1
            else:
                assert status == 200, (attempt, body)
                assert body["data"]["status_code"] == "499"
                assert job["status"] == JobStatus.FAILED and job["status_code"] == 499
                assert job["error"] == CANCELLED_ERROR
                assert sum(written.values()) == 0, (attempt, written)
                if job_id in entities.wrote:
                    counts["cancelled while writing (removed)"] += 1
                else:
                    counts["cancelled before writing"] += 1
    finally:
        await consumer.stop(drain_seconds=5)
    print(f"\nthe cancel race, {ATTEMPTS} attempts: {counts}")
    # The timings reach each outcome.
    assert all(counts.values()), counts

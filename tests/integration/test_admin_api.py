"""The operators' endpoints: the job list, one job, the counts, the dead-letter replay; all behind
`jobs:admin`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest

from service.domain.clock import utcnow
from service.domain.jobs import JobOutcome, Link, new_job_id, order_key
from service.messaging.broker import ready_messages
from service.storage.outcome_stats import OutcomeRecorder, OutcomeStats
from tests.conftest import bearer, new_job
from tests.harness import example
from tests.integration.test_dead_letters import dead_letter

ADMIN = bearer(client_id="ops", scopes=("jobs:admin",))
ENDPOINTS = [
    ("GET", "/api/admin/jobs"),
    ("GET", f"/api/admin/jobs/{new_job_id()}"),
    ("GET", "/api/admin/stats"),
    ("POST", "/api/admin/dead-letters/replay"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_needs_the_admin_scope(api, method, path) -> None:
    assert (await api.request(method, path)).status == 401
    response = await api.request(method, path, headers=bearer(scopes=("job:read",)))
    body = await response.json()
    assert response.status == 403
    assert body["error"]["type"] == "forbidden" and "jobs:admin" in body["error"]["message"]


async def test_the_page_holds_no_data_and_runs_only_its_own_script(api) -> None:
    page = await api.get("/dashboard")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert "/dashboard/dashboard.js" in html and "http" not in html.split("<body>")[1]
    for asset, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response = await api.get(f"/dashboard/{asset}")
        assert response.status == 200 and response.content_type == kind
    assert (await api.get("/dashboard/../service/app.py")).status == 404
    assert (await api.get("/dashboard/other.js")).status == 404


async def store_jobs(store, count: int, **job_fields) -> list[str]:
    ids = []
    for _ in range(count):
        job, _ = await store.create_pending(new_job(**job_fields))
        ids.append(job["_id"])
    return ids


async def test_the_list_is_newest_first_filtered_and_rendered_as_the_seed(api, store) -> None:
    pending = await store_jobs(store, 2, client_id="mis-a")
    processed = await store_jobs(store, 1, client_id="mis-b")
    await store.finish(processed[0], JobOutcome.processed([Link("encounter", "/api/x")]))
    failed = await store_jobs(store, 1, client_id="mis-a", type="encounter_package.cancel")
    await store.finish(failed[0], JobOutcome.failed(404, "not_found", "Patient not found"))

    body = await (await api.get("/api/admin/jobs", headers=ADMIN)).json()
    assert [job["id"] for job in body["data"]] == failed + processed + pending[::-1]
    assert body["paging"] == {"limit": 50, "next_cursor": None}
    first = body["data"][0]
    assert first["status"] == "failed" and first["status_code"] == "404"
    assert first["client_id"] == "mis-a" and "hash" not in first
    # Its client's rendering: what the job's own client reads at GET /api/jobs/{id}.
    own = await api.get(f"/api/jobs/{failed[0]}", headers=bearer(client_id="mis-a"))
    assert first["job"] == (await own.json())["data"]

    async def ids(query: str) -> list[str]:
        response = await api.get(f"/api/admin/jobs?{query}", headers=ADMIN)
        assert response.status == 200, await response.text()
        return [job["id"] for job in (await response.json())["data"]]

    assert await ids("status=pending") == pending[::-1]
    assert await ids("status=pending&order=oldest") == pending
    assert await ids("client_id=mis-b") == processed
    assert await ids("type=encounter_package.cancel") == failed
    future = (utcnow() + timedelta(minutes=1)).isoformat()
    assert await ids(f"since={future.replace('+', '%2B')}") == []


async def test_pages_walk_every_job_once_even_when_they_share_a_millisecond(api, db) -> None:
    at = utcnow()
    ties = [(at, f"tie-{n:03d}") for n in range(150)]
    older = [(at - timedelta(seconds=n + 1), f"old-{n:02d}") for n in range(4)]
    await db["jobs"].insert_many(
        [
            {**new_job().to_document(moment), "_id": job_id, "order_key": order_key(moment, job_id)}
            for moment, job_id in ties + older
        ]
    )
    newest_first = [job_id for _, job_id in ties[::-1] + older]
    for order, expected in (("newest", newest_first), ("oldest", newest_first[::-1])):
        seen, cursor, pages = [], "", 0
        while True:
            query = f"limit=7&order={order}" + (f"&cursor={cursor}" if cursor else "")
            body = await (await api.get(f"/api/admin/jobs?{query}", headers=ADMIN)).json()
            seen += [job["id"] for job in body["data"]]
            pages += 1
            cursor = body["paging"]["next_cursor"]
            if cursor is None:
                break
        assert seen == expected
        assert pages == 22


@pytest.mark.parametrize(
    ("query", "entry"),
    [
        ("status=done", "$.status"),
        ("limit=0", "$.limit"),
        ("limit=1000", "$.limit"),
        ("since=yesterday", "$.since"),
        ("cursor=bm90LWEtY3Vyc29y", "$.cursor"),
        ("cursor=%E2%82%AC", "$.cursor"),
        ("since=0001-01-01T00:00:00%2B05:00", "$.since"),
        ("order=random", "$.order"),
        ("colour=blue", "$.colour"),
    ],
)
async def test_a_bad_query_is_a_422_naming_the_parameter(api, query, entry) -> None:
    response = await api.get(f"/api/admin/jobs?{query}", headers=ADMIN)
    body = await response.json()
    assert response.status == 422
    assert [item["entry"] for item in body["error"]["invalid"]] == [entry]


async def test_one_job_of_any_client(api, store) -> None:
    (job_id,) = await store_jobs(store, 1, client_id="someone-else")
    body = await (await api.get(f"/api/admin/jobs/{job_id}", headers=ADMIN)).json()
    assert body["data"]["id"] == job_id and body["data"]["client_id"] == "someone-else"
    assert body["data"]["job"]["status"] == "pending"
    for unknown in (new_job_id(), "not$an id"):
        response = await api.get(f"/api/admin/jobs/{unknown}", headers=ADMIN)
        assert response.status == 404


async def test_stats_count_pending_finished_by_outcome_and_the_queues(
    api, store, db, raw_publisher
) -> None:
    pending = await store_jobs(store, 3)
    recorder = OutcomeRecorder(db)
    now = utcnow()
    for seconds, status, code in [
        (0.02, "processed", 200),
        (0.2, "processed", 200),
        (0.3, "failed", 422),
        (4.0, "failed_with_error", 500),
    ]:
        recorder.record(now, status, code, seconds)
    recorder.record(now - timedelta(hours=3), "failed", 404, 0.01)
    await recorder.flush()
    await recorder.flush()  # nothing left to write: counted once
    await raw_publisher.publish(orjson.dumps(example("encounter_package")), message_id=new_job_id())
    await dead_letter(raw_publisher, b"{}", message_id=new_job_id())
    await asyncio.sleep(0.3)

    data = (await (await api.get("/api/admin/stats", headers=ADMIN)).json())["data"]
    assert data["pending"]["count"] == 3 and data["pending"]["capped"] is False
    assert data["pending"]["oldest_age_seconds"] >= 0
    hour, day = data["last_hour"], data["last_day"]
    assert hour["by_status"] == {"processed": 2, "failed": 1, "failed_with_error": 1}
    assert hour["by_status_code"] == {"200": 2, "422": 1, "500": 1}
    assert hour["finished"] == 4 and day["finished"] == 5
    assert day["by_status_code"]["404"] == 1
    assert hour["processing_ms_p50"] == 250 and hour["processing_ms_p95"] == 5000
    assert len(data["per_minute"]) == 60
    assert data["per_minute"][-1]["processed"] == 2
    assert sum(minute["failed"] for minute in data["per_minute"]) == 1
    assert data["queue"] == {"ready": 1, "dead_letters": 1}
    assert len(pending) == 3


async def test_replay_moves_exactly_the_messages_asked_for(api, raw_publisher) -> None:
    job_ids = [new_job_id() for _ in range(4)]
    for job_id in job_ids:
        await dead_letter(raw_publisher, b"{}", message_id=job_id)
    await asyncio.sleep(0.3)

    async def replay(body: dict) -> dict:
        response = await api.post("/api/admin/dead-letters/replay", json=body, headers=ADMIN)
        assert response.status == 200, await response.text()
        return (await response.json())["data"]

    assert await replay({"job_ids": [job_ids[2], new_job_id()]}) == {
        "replayed": 1,
        "dead_letters": 3,
    }
    work_queue = await raw_publisher.channel.get_queue(raw_publisher.topology.queue)
    moved = await work_queue.get(no_ack=True, fail=False)
    assert moved is not None and moved.message_id == job_ids[2]
    assert await replay({"limit": 2}) == {"replayed": 2, "dead_letters": 1}
    assert await replay({}) == {"replayed": 1, "dead_letters": 0}
    assert await ready_messages(work_queue) == 3
    left = [await work_queue.get(no_ack=True) for _ in range(3)]
    assert {message.message_id for message in left} == {job_ids[0], job_ids[1], job_ids[3]}


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"job_ids": []}',
        b'{"job_ids": [1]}',
        b'{"limit": 0}',
        b'{"job_ids": ["a"], "limit": 1}',
    ],
)
async def test_a_bad_replay_request_is_a_422(api, body) -> None:
    response = await api.post(
        "/api/admin/dead-letters/replay",
        data=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status == 422
    assert (await response.json())["error"]["type"] == "validation_failed"


async def test_jobs_finishing_while_counts_are_written_are_counted_once(db) -> None:
    recorder = OutcomeRecorder(db)
    now = utcnow()
    recorder.record(now, "processed", 200, 0.01)
    writing = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)  # the flush has taken the minute's count and waits for the server
    recorder.record(now, "processed", 200, 0.01)
    await writing
    await recorder.flush()
    (minute,) = await OutcomeStats(db).since(now - timedelta(minutes=1))
    assert minute["status"] == {"processed": 2}


async def test_jobs_stored_before_the_list_existed_are_left_out_not_a_500(api, db, store) -> None:
    (listed,) = await store_jobs(store, 1)
    legacy = new_job().to_document(utcnow())
    del legacy["order_key"]
    await db["jobs"].insert_one(legacy)
    for query in ("", "order=oldest", "status=pending&order=oldest", "since=0999-01-01T00:00:00Z"):
        response = await api.get(f"/api/admin/jobs?{query}", headers=ADMIN)
        assert response.status == 200, await response.text()
        assert [job["id"] for job in (await response.json())["data"]] == [listed]

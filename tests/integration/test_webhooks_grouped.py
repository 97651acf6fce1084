"""The webhook store's grouped round trips, against the real database: the endpoint reads made
while one is in progress go together into one query, and the attempts' records into one
insert; each caller gets its own answer; a read never answers from a query older than the
call (a delete made before the call is seen); an insert that fails fails only its caller."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pymongo.errors import WriteError

from service.domain.clock import utcnow
from service.storage.webhooks import WebhookStore


def _endpoint(client_id: str = "mis-a") -> dict:
    return {
        "_id": str(uuid.uuid4()),
        "client_id": client_id,
        "url": "https://mis.example/hook",
        "events": ["job.failed"],
        "secrets": [{"key": "whsec_x", "expires_at": None}],
        "created_at": utcnow(),
    }


def _attempt(endpoint_id: str, job_id: str) -> dict:
    return {
        "endpoint_id": endpoint_id,
        "client_id": "mis-a",
        "webhook_id": f"msg_{job_id}",
        "event_type": "job.failed",
        "job_id": job_id,
        "attempt": 1,
        "status": "delivered",
        "duration_ms": 1.0,
        "response_status": 204,
        "error": None,
        "at": utcnow(),
    }


def _counting(store: WebhookStore, name: str, gate: asyncio.Event | None = None) -> list[int]:
    """Wrap `store.<name>` (a grouped round trip): the size of each round trip, in order; the
    first one held until `gate` is set."""
    sizes: list[int] = []
    grouped = store._reads if name == "_get_many" else store._records
    real = grouped._run

    async def counted(items: list) -> list:
        sizes.append(len(items))
        if gate is not None and len(sizes) == 1:
            await gate.wait()
        return await real(items)

    grouped._run = counted
    return sizes


async def test_reads_made_meanwhile_go_in_one_query_each_caller_its_endpoint(db):
    store = WebhookStore(db)
    endpoints = [await store.create(_endpoint()) for _ in range(5)]
    gate = asyncio.Event()
    sizes = _counting(store, "_get_many", gate)
    first = asyncio.create_task(store.get(endpoints[0]["_id"]))
    await asyncio.sleep(0.05)  # the first round trip is in progress (held)
    ids = [e["_id"] for e in endpoints] * 4 + ["no-such-endpoint"]
    rest = [asyncio.create_task(store.get(endpoint_id)) for endpoint_id in ids]
    await asyncio.sleep(0.05)
    gate.set()
    assert (await first)["_id"] == endpoints[0]["_id"]
    answers = await asyncio.gather(*rest)
    assert [a and a["_id"] for a in answers] == [*ids[:-1], None]
    assert sizes == [1, len(ids)]  # 22 reads, 2 queries
    # Each caller its own copy.
    answers[0]["secrets"][0]["key"] = "changed"
    assert answers[5]["secrets"][0]["key"] == "whsec_x"


async def test_a_read_made_after_a_delete_does_not_see_the_endpoint(db):
    """The read in progress started before the delete; the call made after the delete waits
    for a query of its own, which starts after it: it sees the endpoint gone."""
    store = WebhookStore(db)
    endpoint = await store.create(_endpoint())
    gate = asyncio.Event()
    sizes = _counting(store, "_get_many", gate)
    before = asyncio.create_task(store.get(endpoint["_id"]))
    await asyncio.sleep(0.05)
    assert await store.delete_for_client(endpoint["_id"], endpoint["client_id"])
    after = asyncio.create_task(store.get(endpoint["_id"]))
    await asyncio.sleep(0.05)
    gate.set()
    await before
    assert await after is None
    assert sizes == [1, 1]


async def test_records_made_meanwhile_go_in_one_insert_every_one_kept(db):
    store = WebhookStore(db)
    gate = asyncio.Event()
    sizes = _counting(store, "_insert_attempts", gate)
    first = asyncio.create_task(store.record_attempt(_attempt("e1", "j0")))
    await asyncio.sleep(0.05)
    rest = [
        asyncio.create_task(store.record_attempt(_attempt("e1", f"j{i}"))) for i in range(1, 31)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    await asyncio.gather(*rest)
    assert sizes == [1, 30]
    found = await store.deliveries("e1", None, 100)
    assert sorted(a["job_id"] for a in found) == sorted(f"j{i}" for i in range(31))
    assert len({a["seq"] for a in found}) == 31


async def test_an_insert_that_fails_fails_its_caller_only(db):
    store = WebhookStore(db)
    await store.record_attempt(_attempt("e2", "j-old"))
    taken = (await store.deliveries("e2", None, 1))[0]["_id"]
    good = [{"_id": uuid.uuid4().hex, "seq": i, **_attempt("e2", f"j{i}")} for i in range(3)]
    clash = {"_id": taken, "seq": 9, **_attempt("e2", "j-clash")}
    calls = [store._records(doc) for doc in (good[0], clash, good[1], good[2])]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert answers[0] is None and answers[2] is None and answers[3] is None
    assert isinstance(answers[1], WriteError)
    found = {a["job_id"] for a in await store.deliveries("e2", None, 100)}
    assert found == {"j-old", "j0", "j1", "j2"}


@pytest.mark.parametrize("failing", ["_get_many", "_insert_attempts"])
async def test_a_failed_round_trip_raises_to_each_caller_and_the_next_one_runs(db, failing):
    store = WebhookStore(db)
    endpoint = await store.create(_endpoint())
    grouped = store._reads if failing == "_get_many" else store._records
    real = grouped._run
    failures = 0

    async def fail_once(items: list) -> list:
        nonlocal failures
        if failures == 0:
            failures += 1
            await asyncio.sleep(0.05)
            raise RuntimeError("down")
        return await real(items)

    grouped._run = fail_once

    def call(i: int):
        if failing == "_get_many":
            return store.get(endpoint["_id"])
        return store.record_attempt(_attempt(endpoint["_id"], f"j{i}"))

    first = await asyncio.gather(call(0), call(1), return_exceptions=True)
    assert all(isinstance(a, RuntimeError) for a in first)
    second = await asyncio.gather(call(2), call(3))
    if failing == "_get_many":
        assert [a["_id"] for a in second] == [endpoint["_id"]] * 2
    else:
        found = {a["job_id"] for a in await store.deliveries(endpoint["_id"], None, 10)}
        assert found == {"j2", "j3"}

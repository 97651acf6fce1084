"""What the API keeps in memory: finished jobs (they never change) and verified tokens."""

from __future__ import annotations

import gc
import time
import tracemalloc
from datetime import UTC, datetime

import jwt
import orjson
import pytest

from service.api import auth
from service.api.keys import JOB_SERVICE
from service.api.views.jobs import _rendered as render_job
from service.domain.jobs import MAX_ERROR_BYTES, JobOutcome
from service.usecases import finished_jobs
from service.usecases.finished_jobs import FinishedJobs
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, bearer, new_job
from tests.integration.conftest import app_for


async def test_a_finished_job_is_answered_without_asking_mongodb_again(api, store, db) -> None:
    job, _ = await store.create_pending(new_job())
    url = f"/api/jobs/{job['_id']}"
    assert (await (await api.get(url, headers=bearer())).json())["data"]["status"] == "pending"
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    # A pending job is answered from memory until its finish is heard (test_poll_from_memory):
    # heard here as this process hears its own cancel.
    await api.app[JOB_SERVICE].events.announce(job["_id"])

    first = await api.get(url, headers=bearer())  # read afresh, and kept once finished
    assert (await first.json())["data"]["status"] == "failed"
    await db["jobs"].delete_one({"_id": job["_id"]})
    again = await api.get(url, headers=bearer())
    assert again.status == 200 and (await again.json())["data"] == (await first.json())["data"]
    # Its `data` and ETag are made once; `meta` is each request's own.
    assert again.headers["ETag"] == first.headers["ETag"]
    third = await api.get(url, headers={**bearer(), "X-Request-Id": "third-poll"})
    body = await third.json()
    assert body["meta"]["request_id"] == "third-poll" and body["meta"]["url"].endswith(url)
    assert body["data"] == (await first.json())["data"]
    conditional = await api.get(url, headers={**bearer(), "If-None-Match": first.headers["ETag"]})
    assert conditional.status == 304
    # Kept per client: another client still cannot see it.
    other = await api.get(url, headers=bearer(client_id=OTHER_CLIENT_ID))
    assert other.status == 404


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """How many times a token was verified (`jwt.decode` called): one count per call."""
    calls: list[int] = []
    original = jwt.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


async def test_a_verified_token_is_not_verified_again_until_it_expires(
    api, monkeypatch, decoded
) -> None:
    headers = bearer(client_id=CLIENT_ID)
    for _ in range(3):
        assert (await api.get("/api/jobs/unknown", headers=headers)).status == 404
    assert len(decoded) == 1

    later = time.time() + 3600 + auth.CLOCK_LEEWAY_SECONDS + 1  # past its `exp`
    monkeypatch.setattr(auth.time, "time", lambda: later)
    response = await api.get("/api/jobs/unknown", headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["message"] == "The access token has expired"


async def test_only_the_header_as_written_is_kept(api, decoded) -> None:
    """Other spellings `bearer_token` takes ("bearer", extra spaces) are verified each time:
    one token cannot fill the verified tokens kept with variants of itself."""
    token = bearer(client_id=CLIENT_ID)["Authorization"].removeprefix("Bearer ")
    for header in (f"bearer {token}", f"Bearer  {token}", f"BEARER {token}"):
        for _ in range(2):
            response = await api.get("/api/jobs/unknown", headers={"Authorization": header})
            assert response.status == 404
    assert len(decoded) == 6


def near_cap_422(entries: int = 400) -> JobOutcome:
    """A 422 whose stored error is near the 10,000-byte cap (the largest a job can hold)."""
    invalid = [
        {
            "entry_type": "json_data_property",
            "entry": f"$.observations.[{n}].code.coding.[0].code",
            "rules": [
                {
                    "rule": "required",
                    "params": [],
                    "description": "required property code was not present",
                }
            ],
        }
        for n in range(entries)
    ]
    outcome = JobOutcome.validation_failed(invalid)
    assert len(orjson.dumps(outcome.error)) > MAX_ERROR_BYTES - 200
    return outcome


async def test_the_finished_jobs_kept_are_bounded_in_bytes_and_the_oldest_go(
    aiohttp_client, settings, store, db
) -> None:
    bound = 200 * 1024
    api = await aiohttp_client(app_for(settings.with_changes(finished_job_cache_bytes=bound)))
    kept = api.app[JOB_SERVICE].finished_jobs
    job_ids = []
    for _ in range(50):  # about 500 KB of responses: more than twice the bound
        job, _ = await store.create_pending(new_job())
        await store.finish(job["_id"], near_cap_422())
        job_ids.append(job["_id"])
        response = await api.get(f"/api/jobs/{job['_id']}", headers=bearer())
        assert response.status == 200
        assert len(await response.read()) > MAX_ERROR_BYTES - 200
        assert 0 < kept.bytes_kept <= bound
    assert 10 <= len(kept) < 25  # about 11 KB counted per job, under the bound

    # Kept: the newest, answered with MongoDB's copy gone; gone: the oldest, read afresh.
    await db["jobs"].delete_many({"_id": {"$in": job_ids}})
    assert (await api.get(f"/api/jobs/{job_ids[-1]}", headers=bearer())).status == 200
    assert (await api.get(f"/api/jobs/{job_ids[0]}", headers=bearer())).status == 404


def test_what_a_kept_job_counts_is_what_it_costs_in_memory() -> None:
    """The bound holds in real memory: tracemalloc's count of what the cache keeps for a
    near-cap 422 (from the document a read returns to the bytes kept) is within what it
    counts, about 11 KB (the job document and its rendered dict, kept before: 67 KiB)."""
    finished = FinishedJobs()
    count = 200
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            job_id = f"job-{n:04d}-{'x' * 20}"
            stored = {
                "_id": job_id,
                "type": "encounter_package.create",
                **near_cap_422().to_update(),
            }
            job = orjson.loads(orjson.dumps(stored))  # a tree of its own, as a read returns
            job["eta"] = job["inserted_at"] = job["updated_at"] = datetime.now(UTC)
            finished.rendered(job_id, CLIENT_ID, job, render_job)
            assert finished.get(job_id, CLIENT_ID) is not None
        del job, stored
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(finished) == count
    assert used <= finished.bytes_kept, (used / count, finished.bytes_kept / count)
    assert finished.bytes_kept / count < 12 * 1024


async def test_a_finished_job_is_kept_five_minutes_then_read_again(
    api, store, db, monkeypatch
) -> None:
    """docs/operations.md: "An API process keeps a finished job it served in memory for 5
    minutes ... a job may still be answered for up to 5 minutes after its removal"."""
    job, _ = await store.create_pending(new_job())
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    url = f"/api/jobs/{job['_id']}"
    now = time.monotonic()
    monkeypatch.setattr(finished_jobs.time, "monotonic", lambda: now)
    assert (await api.get(url, headers=bearer())).status == 200
    await db["jobs"].delete_one({"_id": job["_id"]})

    now += 299  # within the 5 minutes: answered from memory
    assert (await api.get(url, headers=bearer())).status == 200
    now += 2  # past them: read again, and gone
    assert (await api.get(url, headers=bearer())).status == 404
    assert len(api.app[JOB_SERVICE].finished_jobs) == 0

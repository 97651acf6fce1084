"""What the API keeps in memory: finished jobs (they never change) and verified tokens."""

from __future__ import annotations

import time

import jwt

from service.api import auth
from service.domain.jobs import JobOutcome
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, bearer, new_job


async def test_a_finished_job_is_answered_without_asking_mongodb_again(api, store, db) -> None:
    job, _ = await store.create_pending(new_job())
    url = f"/api/jobs/{job['_id']}"
    assert (await (await api.get(url, headers=bearer())).json())["data"]["status"] == "pending"
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))

    first = await api.get(url, headers=bearer())  # pending is never kept: read afresh
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


async def test_a_verified_token_is_not_verified_again_until_it_expires(api, monkeypatch) -> None:
    decoded = 0
    original = jwt.decode

    def counting(*args, **kwargs):
        nonlocal decoded
        decoded += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    headers = bearer(client_id=CLIENT_ID)
    for _ in range(3):
        assert (await api.get("/api/jobs/unknown", headers=headers)).status == 404
    assert decoded == 1

    later = time.time() + 3600 + auth.CLOCK_LEEWAY_SECONDS + 1  # past its `exp`
    monkeypatch.setattr(auth.time, "time", lambda: later)
    response = await api.get("/api/jobs/unknown", headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["message"] == "The access token has expired"

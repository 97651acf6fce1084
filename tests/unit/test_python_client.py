"""The Python client (client/) against a stub server that answers what a test scripts: the
retry and timeout policy (503 with and without Retry-After, full jitter, connection failures,
a POST never sent twice once it may have been done), 303 never followed, 304 with the ETag
sent, a server without long polls, and `list_jobs` / `cancel` against their contract. The real
API's behaviour is tested in tests/integration/test_python_client.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from medevents_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    JobError,
    JobStatus,
    Link,
    NotFound,
    ServerError,
    ServiceUnavailable,
    ValidationFailed,
)
from medevents_client import aio as client_aio
from medevents_client.models import Job

from service.storage.embedded import free_port

PUBLISHED = Path(__file__).resolve().parents[1] / "integration" / "published_examples"
JOB_ID = "NBXk9EyErUZv1RhXgyvgg"


def pending(job_id: str = JOB_ID) -> dict[str, Any]:
    return {
        "status": "pending",
        "eta": "2030-01-01T00:00:00.000Z",
        "links": [{"entity": "job", "href": f"/api/jobs/{job_id}"}],
    }


PROCESSED = {
    "status": "processed",
    "eta": "2030-01-01T00:00:00.000Z",
    "status_code": "200",
    "links": [{"entity": "encounter", "href": "/api/patients/p/encounters/e1"}],
}


def envelope(data: Any, code: int) -> dict[str, Any]:
    return {"data": data, "meta": {"code": code, "url": "http://stub", "request_id": "req-1"}}


def error_body(status: int, error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "error": {"type": error_type, "message": message, **extra},
        "meta": {"code": status, "url": "http://stub", "request_id": f"req-{status}"},
    }


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


Reply = Callable[[web.Request], Any] | web.Response


@dataclass
class Stub:
    """Answers each request with the next scripted reply for its method and path (the last one
    again once the script runs out); records every request."""

    replies: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def script(self, method: str, path: str, *replies: Reply) -> None:
        self.replies[(method, path)] = list(replies)

    def of(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                time.monotonic(),
            )
        )
        replies = self.replies.get((request.method, request.path))
        if not replies:
            return json_reply(404, error_body(404, "not_found", "Not found"))
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, web.Response):
            return _copy(reply)
        result = reply(request)
        return await result if asyncio.iscoroutine(result) else result


def _copy(response: web.Response) -> web.Response:
    return web.Response(status=response.status, body=response.body, headers=dict(response.headers))


def json_reply(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )


def job_reply(data: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return json_reply(status, envelope(data, status), **headers)


@pytest.fixture
async def stub(aiohttp_server):
    stub = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    server = await aiohttp_server(app)
    stub.url = str(server.make_url("/"))
    return stub


def client_for(stub: Stub, **options: Any) -> AsyncClient:
    options.setdefault("backoff", 0.05)
    return AsyncClient(stub.url, "token-1", **options)


# --- wait: 503, Retry-After, ETag, 303 ---


async def test_wait_honours_retry_after_sends_the_etag_and_does_not_follow_the_303(stub):
    path = f"/api/jobs/{JOB_ID}"
    tag = 'W/"pending-1"'
    stub.script(
        "GET",
        path,
        json_reply(
            503,
            error_body(503, "service_unavailable", "The job store is unavailable"),
            **{"Retry-After": "1"},
        ),
        job_reply(pending(), ETag=tag, **{"Retry-After": "1"}),
        web.Response(status=304, headers={"ETag": tag, "Retry-After": "1"}),
        # A Location the client must not go to (the API sends none; a proxy might).
        job_reply(PROCESSED, 303, Location="/elsewhere"),
    )
    async with client_for(stub) as client:
        job = await client.wait(JOB_ID, timeout=20)
    polls = stub.of("GET", path)
    assert len(polls) == 4
    # Each poll a long poll of what is left of the 20 s.
    assert all(15 < float(p.query["wait"]) <= 20 for p in polls)
    # The 503's Retry-After: 1 s at least before the next request (plus jitter).
    assert polls[1].at - polls[0].at >= 1.0
    # The ETag of the pending answer goes back as If-None-Match; the 304 keeps it.
    assert "If-None-Match" not in polls[1].headers
    assert polls[2].headers["If-None-Match"] == tag
    assert polls[3].headers["If-None-Match"] == tag
    # 303 is terminal: its body is the job, its Location never requested.
    assert stub.of("GET", "/elsewhere") == []
    assert job.status is JobStatus.PROCESSED and job.http_status == 303
    assert job.links == [Link("encounter", "/api/patients/p/encounters/e1")]
    assert job.status_code == 200


async def test_wait_asks_for_the_servers_maximum_long_poll(stub):
    stub.script("GET", f"/api/jobs/{JOB_ID}", job_reply(PROCESSED, 303))
    async with client_for(stub) as client:
        await client.wait(JOB_ID, timeout=600)
    (poll,) = stub.seen
    assert poll.query == {"wait": "30"}


async def test_503_backoff_is_full_jitter_within_the_exponential_bound(stub, monkeypatch):
    """Without Retry-After, each delay is uniform in [0, min(max_backoff, backoff * 2**n)]."""
    drawn: list[tuple[float, float]] = []
    real_uniform = client_aio.random.uniform

    def recording_uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return real_uniform(low, high)

    monkeypatch.setattr(client_aio.random, "uniform", recording_uniform)
    unavailable = json_reply(503, error_body(503, "service_unavailable", "down"))
    stub.script("GET", f"/api/jobs/{JOB_ID}", *[unavailable] * 5, job_reply(PROCESSED, 303))
    async with client_for(stub, backoff=0.05, max_backoff=0.3) as client:
        job = await client.wait(JOB_ID, timeout=20)
    assert job.status is JobStatus.PROCESSED
    assert drawn == [(0, 0.05), (0, 0.1), (0, 0.2), (0, 0.3), (0, 0.3)]
    times = [s.at for s in stub.seen]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap <= 0.3 + 0.25 for gap in gaps)


async def test_wait_gives_up_at_its_timeout_and_raises_the_last_503(stub):
    stub.script(
        "GET",
        f"/api/jobs/{JOB_ID}",
        json_reply(503, error_body(503, "service_unavailable", "down"), **{"Retry-After": "0"}),
    )
    started = time.monotonic()
    async with client_for(stub) as client:
        with pytest.raises(ServiceUnavailable) as raised:
            await client.wait(JOB_ID, timeout=1.0)
    assert time.monotonic() - started < 1.5
    assert raised.value.retry_after == 0 and raised.value.request_id == "req-503"
    assert len(stub.seen) >= 3  # retried within the timeout


async def test_wait_returns_the_pending_job_when_its_timeout_runs_out(stub):
    async def slow_pending(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["wait"]))
        return job_reply(pending(), ETag='W/"p"', **{"Retry-After": "5"})

    stub.script("GET", f"/api/jobs/{JOB_ID}", slow_pending)
    async with client_for(stub) as client:
        job = await client.wait(JOB_ID, timeout=1.0)
    assert job.status is JobStatus.PENDING and not job.terminal
    assert job.retry_after == 5 and job.etag == 'W/"p"'


async def test_a_server_without_long_polls_is_polled_after_its_retry_after(stub):
    """eHealth itself, or a proxy that strips `?wait=`: pending at once, Retry-After: 1."""
    stub.script(
        "GET",
        f"/api/jobs/{JOB_ID}",
        job_reply(pending(), **{"Retry-After": "1"}),
        job_reply(pending(), **{"Retry-After": "1"}),
        job_reply(PROCESSED, 303),
    )
    async with client_for(stub) as client:
        job = await client.wait(JOB_ID, timeout=20)
    assert job.terminal
    times = [s.at for s in stub.seen]
    assert len(times) == 3
    assert all(0.95 <= later - earlier < 1.5 for earlier, later in itertools.pairwise(times))


async def test_wait_raises_errors_that_waiting_does_not_change(stub):
    stub.script(
        "GET", f"/api/jobs/{JOB_ID}", json_reply(404, error_body(404, "not_found", "Job not found"))
    )
    async with client_for(stub) as client:
        with pytest.raises(NotFound) as raised:
            await client.wait(JOB_ID, timeout=10)
    assert len(stub.seen) == 1
    assert raised.value.type == "not_found" and raised.value.message == "Job not found"


# --- connection failures ---


async def test_get_is_retried_on_connection_failures_then_raises():
    port = free_port()  # nothing listens there
    async with AsyncClient(f"http://127.0.0.1:{port}", "t", retries=2, backoff=0.01) as client:
        with pytest.raises(ConnectionFailed) as raised:
            await client.get_job(JOB_ID)
        assert client.requests_sent == 3
    assert raised.value.sent is False and raised.value.status is None


async def test_wait_backs_off_on_connection_failures_until_its_timeout():
    port = free_port()
    started = time.monotonic()
    async with AsyncClient(f"http://127.0.0.1:{port}", "t", backoff=0.05) as client:
        with pytest.raises(ConnectionFailed):
            await client.wait(JOB_ID, timeout=1.0)
        assert client.requests_sent >= 3
    assert time.monotonic() - started < 1.5


async def test_a_get_that_times_out_is_sent_again(stub):
    async def too_slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return job_reply(pending())

    stub.script("GET", f"/api/jobs/{JOB_ID}", too_slow, job_reply(pending()))
    async with client_for(stub, timeout=0.3) as client:
        job = await client.get_job(JOB_ID)
    assert job.status is JobStatus.PENDING and len(stub.seen) == 2


# --- submissions: retried only when nothing was done ---

SUBMIT = "/api/patients/5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f/encounter_package"


def accepted(job_id: str = JOB_ID) -> web.Response:
    return json_reply(
        202, envelope(pending(job_id), 202), Location=f"/api/jobs/{job_id}", **{"Retry-After": "3"}
    )


async def test_a_submission_is_sent_again_after_a_503(stub):
    stub.script(
        "POST",
        SUBMIT,
        json_reply(503, error_body(503, "service_unavailable", "broker"), **{"Retry-After": "0"}),
        accepted(),
    )
    async with client_for(stub) as client:
        job = await client.submit_encounter_package(
            "5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f", {"id": "v"}, "c2lnbmVk"
        )
    assert job.id == JOB_ID and job.status is JobStatus.PENDING and job.http_status == 202
    assert job.retry_after == 3
    posts = stub.of("POST", SUBMIT)
    assert len(posts) == 2
    assert posts[0].headers["Authorization"] == "Bearer token-1"


async def test_a_submission_that_times_out_after_sending_is_never_sent_again(stub):
    async def slow_accept(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(2)
        return accepted()

    stub.script("POST", SUBMIT, slow_accept)
    async with client_for(stub, timeout=0.3, retries=5) as client:
        with pytest.raises(ConnectionFailed) as raised:
            await client.submit(SUBMIT, {"visit": {}, "signed_data": "x"})
    assert raised.value.sent is True
    assert len(stub.of("POST", SUBMIT)) == 1


async def test_a_submission_is_not_retried_on_other_errors(stub):
    stub.script("POST", SUBMIT, json_reply(500, error_body(500, "internal_error", "boom")))
    async with client_for(stub, retries=5) as client:
        with pytest.raises(ServerError) as raised:
            await client.submit(SUBMIT, {"visit": {}, "signed_data": "x"})
    assert raised.value.status == 500 and len(stub.seen) == 1


async def test_a_submission_to_a_closed_port_is_retried_since_nothing_was_sent():
    port = free_port()
    async with AsyncClient(f"http://127.0.0.1:{port}", "t", retries=2, backoff=0.01) as client:
        with pytest.raises(ConnectionFailed) as raised:
            await client.submit(SUBMIT, {"visit": {}, "signed_data": "x"})
        assert client.requests_sent == 3
    assert raised.value.sent is False


async def test_422_of_a_submission_carries_its_invalid_entries(stub):
    invalid = [
        {
            "entry_type": "json_data_property",
            "entry": "$.visit",
            "rules": [{"rule": "required", "params": [], "description": "required property"}],
        }
    ]
    stub.script(
        "POST",
        SUBMIT,
        json_reply(422, error_body(422, "validation_failed", "Validation failed", invalid=invalid)),
    )
    async with client_for(stub) as client:
        with pytest.raises(ValidationFailed) as raised:
            await client.submit(SUBMIT, {})
    (entry,) = raised.value.invalid
    assert entry.entry == "$.visit" and entry.rules[0].rule == "required"
    assert raised.value.request_id == "req-422"


# --- follow ---


async def test_follow_resolves_relative_hrefs_and_refuses_other_origins(stub):
    stub.script(
        "GET",
        "/api/patients/p/encounters/e1",
        json_reply(200, envelope({"id": "e1", "patient_id": "p"}, 200)),
    )
    async with client_for(stub) as client:
        entity = await client.follow(Link("encounter", "/api/patients/p/encounters/e1"))
        assert entity == {"id": "e1", "patient_id": "p"}
        with pytest.raises(ValueError, match="not on"):
            await client.follow("https://elsewhere.example/api/patients/p/encounters/e1")
    assert len(stub.seen) == 1


# --- list_jobs and cancel, against the contract of GET /api/jobs and .../actions/cancel ---


def list_item(job_id: str, status: str = "processed") -> dict[str, Any]:
    data = {**PROCESSED} if status == "processed" else pending(job_id)
    return {"id": job_id, "type": "encounter_package.create", **data}


async def test_list_jobs_pages_through_every_page(stub):
    def page(request: web.Request) -> web.Response:
        token = request.query.get("page_token")
        pages = {
            None: ([list_item("j1"), list_item("j2")], "t2"),
            "t2": ([list_item("j3", "pending")], "t3"),
            "t3": ([], None),
        }
        items, next_token = pages[token]
        return json_reply(
            200,
            {
                "meta": {"code": 200, "type": "list"},
                "data": items,
                "paging": {"limit": 2, "next_page_token": next_token},
            },
        )

    stub.script("GET", "/api/jobs", page)
    from datetime import UTC, datetime

    since = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with client_for(stub) as client:
        jobs = [
            job
            async for job in client.list_jobs(
                status=JobStatus.PROCESSED, type="encounter_package.create", since=since, limit=2
            )
        ]
    assert [job.id for job in jobs] == ["j1", "j2", "j3"]
    assert jobs[0].type == "encounter_package.create" and jobs[2].status is JobStatus.PENDING
    first, second, third = stub.of("GET", "/api/jobs")
    assert first.query == {
        "status": "processed",
        "type": "encounter_package.create",
        "since": "2030-01-02T03:04:05.000Z",
        "limit": "2",
    }
    assert second.query["page_token"] == "t2" and third.query["page_token"] == "t3"


async def test_cancel_answers_the_failed_job_or_raises_409_and_404(stub):
    cancelled = {
        "status": "failed",
        "eta": "2030-01-01T00:00:00.000Z",
        "status_code": "499",
        "error": {"type": "cancelled", "message": "Cancelled by the client"},
    }
    stub.script("POST", f"/api/jobs/{JOB_ID}/actions/cancel", job_reply(cancelled))
    stub.script(
        "POST",
        "/api/jobs/done/actions/cancel",
        json_reply(409, error_body(409, "request_conflict", "The job has already finished")),
    )
    async with client_for(stub) as client:
        job = await client.cancel(JOB_ID)
        assert job.id == JOB_ID and job.status is JobStatus.FAILED and job.status_code == 499
        assert isinstance(job.error, JobError) and job.error.type == "cancelled"
        with pytest.raises(Conflict) as conflict:
            await client.cancel("done")
        assert conflict.value.status == 409 and conflict.value.type == "request_conflict"
        with pytest.raises(NotFound):
            await client.cancel("unknown")


# --- the sync Client, the same operations ---


async def test_the_sync_client_does_the_same_on_its_own_loop(stub):
    stub.script("POST", SUBMIT, accepted())
    stub.script(
        "GET", f"/api/jobs/{JOB_ID}", job_reply(pending(), ETag='W/"p"'), job_reply(PROCESSED, 303)
    )
    stub.script(
        "GET", "/api/patients/p/encounters/e1", json_reply(200, envelope({"id": "e1"}, 200))
    )
    stub.script(
        "GET",
        "/api/jobs",
        json_reply(
            200,
            {"data": [list_item("j1")], "paging": {"limit": 50, "next_page_token": None}},
        ),
    )

    def flow() -> tuple[Job, Job, dict[str, Any], list[Job]]:
        with Client(stub.url, "token-1", backoff=0.05) as client:
            submitted = client.submit(SUBMIT, {"visit": {}, "signed_data": "x"})
            ended = client.wait(submitted.id, timeout=10)
            entity = client.follow(ended.links[0])
            listed = list(client.list_jobs(limit=50))
        return submitted, ended, entity, listed

    submitted, ended, entity, listed = await asyncio.to_thread(flow)
    assert submitted.status is JobStatus.PENDING
    assert ended.status is JobStatus.PROCESSED and entity == {"id": "e1"}
    assert [job.id for job in listed] == ["j1"]


# --- typed results of the published examples ---


@pytest.mark.parametrize(
    "name", ["pending", "processed", "failed_403", "failed_404", "failed_409", "failed_422"]
)
def test_every_published_example_reads_as_a_job(name):
    body = json.loads((PUBLISHED / f"{name}.json").read_text())
    job = Job.from_data(body["data"], job_id="j", body=body)
    assert job.status is JobStatus(body["data"]["status"])
    if name in ("failed_403", "failed_404"):
        assert job.error == "Error description" and job.error_message == "Error description"
    if name == "failed_409":
        assert isinstance(job.error, JobError) and job.error.type
    if name == "failed_422":
        assert isinstance(job.error, JobError) and job.status_code == 422
        entry = job.error.invalid[0]
        assert entry.entry.startswith("$.") and entry.rules[0].description
    if name == "processed":
        assert len(job.links) == 11 and job.status_code == 200 and job.terminal
    if name == "pending":
        assert job.eta is not None and job.eta.tzinfo is not None and not job.terminal


def test_a_sync_client_never_closed_stops_its_thread_when_collected():
    import gc
    import threading

    from medevents_client import Client

    before = {thread.ident for thread in threading.enumerate()}
    client = Client("http://127.0.0.1:9", "token")
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert [t.name for t in started] == ["medevents-client"]
    del client
    gc.collect()
    started[0].join(timeout=5)
    assert not started[0].is_alive()

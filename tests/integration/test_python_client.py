"""The Python client (client/) against the real API served on a real port, with the real
consumer, broker and database: how many requests `wait` makes for a job that takes 3 s (against
the 0.2 s polling loop it replaces), 304s with the ETag sent, 303 taken as the end and never
followed, exceptions made from the API's own error envelopes, every link of a processed package
followed, the blocking `Client` doing the same, `list_jobs` paging and `cancel`. The retry
policy (503 and Retry-After, jitter, connection failures, POSTs never sent twice) is tested
against a stub server: tests/unit/test_python_client.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from medevents_client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    JobError,
    JobStatus,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from medevents_client import aio as client_aio

from consumers.processors import builtin_registry
from service.api.app import create_app
from service.api.auth import mint_token
from service.bootstrap import Services
from service.domain.entities import ALL_ENTITY_KINDS
from service.usecases.job_types import HttpSubmission, JobContext
from tests.conftest import TEST_SECRET
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, INACTIVE_PATIENT, example
from tests.note_job_type import NOTE, write_note

SLOW_SECONDS = 3.0


async def write_note_slowly(context: JobContext):
    await asyncio.sleep(SLOW_SECONDS)
    return await write_note(context)


# The tests' note, taking 3 s to process.
SLOW_NOTE = dataclasses.replace(
    NOTE,
    name="slow_note.create",
    handler=write_note_slowly,
    http=HttpSubmission("POST", "/api/patients/{patient_id}/slow_notes", "A slow note"),
)
SLOW_NOTES = f"/api/patients/{ACTIVE_PATIENT}/slow_notes"
READ_ENTITIES = tuple(f"{kind.entity}:read" for kind in ALL_ENTITY_KINDS)
EVERYTHING = ("job:read", "encounter:write", "note:write", *READ_ENTITIES)


def token(*scopes: str, client_id: str = DEMO_CLIENT) -> str:
    return mint_token(TEST_SECRET, client_id, list(scopes or EVERYTHING), "user-1", 3600)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    response_headers: dict[str, str]


@dataclass
class Served:
    url: str
    requests: list[Request] = field(default_factory=list)

    def of(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def served(aiohttp_server, settings, db, patients, start_consumer) -> Served:
    """The real app (with the slow note) on a real port, every request it answers recorded,
    and a consumer."""
    registry = builtin_registry().with_types(SLOW_NOTE)
    app = create_app(Services(settings, registry))
    seen: list[Request] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        seen.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                response.status,
                dict(response.headers),
            )
        )
        return response

    app.middlewares.insert(0, record)  # outermost: what the client receives
    server = await aiohttp_server(app)
    await start_consumer(registry)
    return Served(str(server.make_url("/")), seen)


async def test_wait_makes_a_handful_of_requests_for_a_job_that_takes_3_s(served):
    async with AsyncClient(served.url, token()) as client:
        waited = await client.submit(SLOW_NOTES, {"text": "waited for"})
        polled = await client.submit(SLOW_NOTES, {"text": "polled for"})
        assert waited.status is JobStatus.PENDING and waited.http_status == 202

        async def wait() -> float:
            started = time.monotonic()
            job = await client.wait(waited.id, timeout=60)
            assert job.status is JobStatus.PROCESSED and job.http_status == 303
            return time.monotonic() - started

        async def poll_every_200_ms() -> None:
            """What `medevents publish --wait` did before: a GET every 0.2 s."""
            while not (await client.get_job(polled.id)).terminal:  # noqa: ASYNC110 - on purpose
                await asyncio.sleep(0.2)

        took, _ = await asyncio.gather(wait(), poll_every_200_ms())

    long_polls = served.of(f"/api/jobs/{waited.id}")
    short_polls = served.of(f"/api/jobs/{polled.id}")
    print(
        f"\njob of {SLOW_SECONDS:g} s: wait() made {len(long_polls)} request(s) in {took:.2f} s; "
        f"polling every 0.2 s made {len(short_polls)}"
    )
    assert took >= SLOW_SECONDS - 0.5
    assert all(float(r.query["wait"]) > 25 for r in long_polls)  # the server's maximum
    assert [r.status for r in long_polls][-1] == 303
    assert len(long_polls) <= 2  # one long poll, answered when the job ends
    assert len(short_polls) >= 10


async def test_short_long_polls_send_the_etag_and_take_304_as_unchanged(served, monkeypatch):
    """Long polls of 1 s (as if the server's maximum were 1 s) over a job of 3 s: the second
    and later ones send the first answer's ETag and are answered 304 until the job ends."""
    monkeypatch.setattr(client_aio, "MAX_LONG_POLL_SECONDS", 1.0)
    async with AsyncClient(served.url, token()) as client:
        job = await client.submit(SLOW_NOTES, {"text": "tagged"})
        ended = await client.wait(job.id, timeout=60)
    assert ended.status is JobStatus.PROCESSED
    polls = served.of(f"/api/jobs/{job.id}")
    statuses = [r.status for r in polls]
    print(f"\n1 s long polls over a 3 s job: {statuses}")
    assert statuses[0] == 200 and statuses[-1] == 303
    assert 304 in statuses and set(statuses[1:-1]) == {304}
    tag = polls[0].response_headers["ETag"]
    assert "If-None-Match" not in polls[0].headers
    assert all(r.headers["If-None-Match"] == tag for r in polls[1:])


async def test_a_processed_package_ends_at_its_303_and_every_link_is_followed(served):
    package = example("encounter_package")
    async with AsyncClient(served.url, token()) as client:
        job = await client.submit_encounter_package(
            package["patient_id"], package["data"]["visit"], package["data"]["signed_data"]
        )
        ended = await client.wait(job.id, timeout=60)
        assert ended.status is JobStatus.PROCESSED and ended.http_status == 303
        assert ended.status_code == 200 and len(ended.links) == 11
        entities = [await client.follow(link) for link in ended.links]
        again = await client.get_job(job.id)
    for link, entity in zip(ended.links, entities, strict=True):
        assert entity["id"] == link.href.rsplit("/", 1)[-1]
        assert entity["patient_id"] == package["patient_id"]
    assert again.status is JobStatus.PROCESSED and again.http_status == 303
    # The 303 was never followed: every request was the job's or an entity's.
    assert {r.path for r in served.requests} == {
        f"/api/patients/{package['patient_id']}/encounter_package",
        f"/api/jobs/{job.id}",
        *(link.href for link in ended.links),
    }


async def test_a_job_failing_422_has_typed_invalid_entries(served):
    submission = example("failed_422_business_rules")
    async with AsyncClient(served.url, token()) as client:
        job = await client.submit(
            f"/api/patients/{submission['patient_id']}/encounter_package", submission["data"]
        )
        ended = await client.wait(job.id, timeout=60)
    assert ended.status is JobStatus.FAILED and ended.status_code == 422
    assert isinstance(ended.error, JobError) and ended.error.type == "validation_failed"
    assert ended.error.invalid and all(entry.entry.startswith("$") for entry in ended.error.invalid)
    assert all(rule.rule and rule.description for e in ended.error.invalid for rule in e.rules)


async def test_exceptions_come_from_the_apis_error_envelopes(served):
    package = example("encounter_package")["data"]
    async with AsyncClient(served.url, "not-a-token") as client:
        with pytest.raises(Unauthorized) as unauthorized:
            await client.get_job("whatever")
    assert unauthorized.value.status == 401 and unauthorized.value.type == "access_denied"
    assert unauthorized.value.request_id

    async with AsyncClient(served.url, token("job:read")) as client:
        with pytest.raises(NotFound) as not_found:
            await client.wait("unknown-job", timeout=10)
        with pytest.raises(Forbidden) as forbidden:
            await client.submit(f"/api/patients/{ACTIVE_PATIENT}/encounter_package", package)
    assert not_found.value.type == "not_found" and not_found.value.message == "Job not found"
    assert "encounter:write" in forbidden.value.message

    async with AsyncClient(served.url, token()) as client:
        with pytest.raises(ValidationFailed) as invalid:
            await client.submit(f"/api/patients/{ACTIVE_PATIENT}/encounter_package", {"visit": 1})
        with pytest.raises(Conflict) as conflict:
            await client.submit(f"/api/patients/{INACTIVE_PATIENT}/encounter_package", package)
    assert invalid.value.status == 422 and invalid.value.type == "validation_failed"
    assert invalid.value.invalid and all(entry.rules for entry in invalid.value.invalid)
    assert {entry.entry for entry in invalid.value.invalid} >= {"$.signed_data"}
    assert conflict.value.message == "Person is not active"
    assert conflict.value.request_id == conflict.value.headers.get("x-request-id")


async def test_the_blocking_client_does_the_same_flow(served):
    package = example("encounter_package")

    def flow() -> tuple[Any, ...]:
        with Client(served.url, token()) as client:
            job = client.submit_encounter_package(
                package["patient_id"], package["data"]["visit"], package["data"]["signed_data"]
            )
            ended = client.wait(job.id, timeout=60)
            entities = [client.follow(link) for link in ended.links]
            return job, ended, entities, client.get_job(job.id), client.requests_sent

    job, ended, entities, again, sent = await asyncio.to_thread(flow)
    assert job.status is JobStatus.PENDING
    assert ended.status is JobStatus.PROCESSED and len(entities) == 11 == len(ended.links)
    assert again.status is JobStatus.PROCESSED
    assert sent == len(served.requests)


async def test_list_jobs_pages_through_the_callers_jobs_and_cancel_ends_a_pending_one(served):
    """Against the real `GET /api/jobs` and `POST /api/jobs/{id}/actions/cancel`."""
    async with AsyncClient(served.url, token()) as client:
        submitted = [await client.submit(SLOW_NOTES, {"text": f"note {n}"}) for n in range(3)]
        listed = [job async for job in client.list_jobs(type="slow_note.create", limit=2)]
        assert [job.id for job in listed] == [job.id for job in reversed(submitted)]
        assert all(job.type == "slow_note.create" for job in listed)
        assert len(served.of("/api/jobs")) == 2  # two pages of 2 and 1

        cancelled = await client.cancel(submitted[0].id)
        assert cancelled.id == submitted[0].id and cancelled.status is JobStatus.FAILED
        assert cancelled.status_code == 499
        assert isinstance(cancelled.error, JobError) and cancelled.error.type == "cancelled"
        with pytest.raises(Conflict) as finished:
            await client.cancel(submitted[0].id)
        assert finished.value.status == 409
        with pytest.raises(NotFound):
            await client.cancel("unknown-job")
        failed = [job.id async for job in client.list_jobs(status=JobStatus.FAILED)]
        assert failed == [submitted[0].id]

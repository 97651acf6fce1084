"""Claims of the docs (api.md, operations.md, job-types.md) that no other test would catch if
they were false, one test each (each was checked by breaking the code it covers and watching
it fail):

- a submission the broker does not take is a 503, and its job ends at once (500, submit it
  again; not removed: another API's identical request may have been handed it), so an
  identical submission is a new job; one whose job cannot be written is a 503 too, and no job
  is left waiting for a message that was never sent;
- a body sent without `Content-Length` is never read past `MAX_REQUEST_BYTES` (413);
- a long poll whose job-finished event is lost answers at the end of its wait, with the job as
  it is then;
- the dashboard writes every value as text, never as markup;
- a dead letter replayed goes back to the jobs queue once, and one that fails again is
  dead-lettered again once; one whose job was set aside (ended at once as it was
  dead-lettered) writes nothing, the job as it was;
- `medevents_consumer_dead_lettered_total` counts the messages the consumer dead-letters.

(The finished-job cache's bound and expiry: `test_caches.py`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from pathlib import Path

import aio_pika
import orjson
import pytest

from service.api.auth import mint_token
from service.domain.jobs import JobOutcome, JobStatus, new_job_id, submission_hash
from service.storage.embedded import free_port
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from tests.conftest import CLIENT_ID, TEST_SECRET, bearer, new_job
from tests.harness import ACTIVE_PATIENT, entity_counts, example, wait_for_jobs
from tests.integration.conftest import app_for

SUBMIT = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
WRITER = ("encounter:write", "job:read")


async def _jobs_queue_count(settings) -> int:
    """Messages ready in the test's jobs queue (a connection of the test's own)."""
    from service.messaging.broker import Topology

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology(settings.amqp_prefix).queue, passive=True)
        return queue.declaration_result.message_count or 0


# --- 503: never a job waiting for a message that was never sent ---


async def test_a_submission_the_broker_does_not_take_is_503_and_its_job_ends(
    aiohttp_client, settings, db, patients
) -> None:
    unreachable = settings.with_changes(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    refusing = await aiohttp_client(app_for(unreachable))
    data = example("encounter_package")["data"]
    response = await refusing.post(SUBMIT, json=data, headers=bearer(scopes=WRITER))
    body = await response.json()
    assert response.status == 503, body
    assert body["error"]["type"] == "service_unavailable"
    assert response.headers["Retry-After"].isdigit()
    # Recorded before the publish, then ended, not removed (another API's identical request
    # may have been handed it): terminal, its key gone.
    (job,) = await db["jobs"].find({}).to_list()
    assert job["status"] == JobStatus.FAILED_WITH_ERROR and job["status_code"] == 500
    assert "submit it again" in job["error"]["message"].lower()
    assert "pending_key" not in job, "a job left for a message never sent"

    # An identical submission, the broker back: a new job, not the ended one.
    working = await aiohttp_client(app_for(settings))
    response = await working.post(SUBMIT, json=data, headers=bearer(scopes=WRITER))
    body = await response.json()
    assert response.status == 202, body
    assert body["data"]["links"][0]["href"].rsplit("/", 1)[-1] != job["_id"]
    assert await db["jobs"].count_documents({"status": int(JobStatus.PENDING)}) == 1


async def test_a_submission_whose_job_cannot_be_written_is_503_and_no_job_waits_for_nothing(
    api, settings, db, patients, monkeypatch, start_consumer
) -> None:
    async def unavailable(*args, **kwargs):
        raise StoreUnavailable("MongoDB went away")

    monkeypatch.setattr(JobStore, "create_pending", unavailable)
    response = await api.post(
        SUBMIT, json=example("encounter_package")["data"], headers=bearer(scopes=WRITER)
    )
    body = await response.json()
    assert response.status == 503, body
    assert body["error"]["type"] == "service_unavailable"
    assert response.headers["Retry-After"].isdigit()
    monkeypatch.undo()

    # Whatever was published is processed into a job that ends; nothing is left pending.
    published = await _jobs_queue_count(settings)
    if published:
        await start_consumer()
        deadline = time.monotonic() + 30
        while await db["jobs"].count_documents({}) < published:
            assert time.monotonic() < deadline, "a published message made no job"
            await asyncio.sleep(0.1)
        await wait_for_jobs(db, [job["_id"] async for job in db["jobs"].find({})])
    assert await db["jobs"].count_documents({"status": int(JobStatus.PENDING)}) == 0


# --- 413 without Content-Length ---


async def test_a_chunked_body_over_the_limit_is_413_before_it_ends(api, settings) -> None:
    """`MAX_REQUEST_BYTES` is 64 KiB in the tests: twice that is sent in chunks, without the
    last chunk. A server that read past the limit would wait for the rest and never answer."""
    token = mint_token(TEST_SECRET, CLIENT_ID, list(WRITER), "user-1", 600)
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(
        (
            f"POST {SUBMIT} HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    chunk = b"[" + b"1," * 4095 + b"1"  # 8 KiB
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent <= 2 * settings.max_request_bytes:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            await asyncio.wait_for(writer.drain(), timeout=5)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 413"), head
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))
    body = orjson.loads(await asyncio.wait_for(reader.readexactly(length), timeout=5))
    assert body["error"]["type"] == "request_entity_too_large"
    writer.close()


# --- a lost job-finished event ---


async def test_a_long_poll_whose_event_is_lost_answers_when_its_wait_runs_out(api, store) -> None:
    job, _ = await store.create_pending(new_job())
    started = time.monotonic()
    poll = asyncio.create_task(api.get(f"/api/jobs/{job['_id']}?wait=2", headers=bearer()))
    await asyncio.sleep(0.3)
    # Finished without its event (the broker lost it): only the end of the wait can tell.
    await store.finish(job["_id"], JobOutcome.failed(404, "not_found", "Patient not found"))
    response = await poll
    elapsed = time.monotonic() - started
    body = await response.json()
    assert 1.9 <= elapsed < 4, elapsed  # not woken (there was no event), not held past it
    assert body["data"]["status"] == "failed", body  # the job as it is then, not as it was


# --- the dashboard writes values as text ---

DASHBOARD = Path(__file__).resolve().parents[2] / "service" / "api" / "dashboard"
MARKUP = '<b id="injected">bold</b><img src="x" onerror="window.__pwned = true">'


def test_the_dashboard_script_has_no_way_to_write_markup() -> None:
    script = (DASHBOARD / "dashboard.js").read_text()
    sinks = re.findall(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|"
        r"createContextualFragment|srcdoc|\beval\(|new Function",
        script,
    )
    assert sinks == [], sinks
    assert "textContent" in script
    page = (DASHBOARD / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "an inline script"
    assert not re.search(r"\son[a-z]+=", page), "an inline event handler"


@pytest.mark.timeout(120)
async def test_markup_in_a_job_is_shown_as_text_on_the_dashboard(api, store) -> None:
    from playwright.async_api import async_playwright, expect

    from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

    assert CHROMIUM, "Debian's chromium is missing: run scripts/ensure-test-tools"
    assert shutil.which("chromium") == CHROMIUM
    pending, _ = await store.create_pending(new_job(type=f"note.create{MARKUP}"))
    failed, _ = await store.create_pending(new_job(type=f"note.create{MARKUP}"))
    await store.finish(failed["_id"], JobOutcome.failed(403, "forbidden", f"Refused {MARKUP}"))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(api.make_url("/dashboard")))
            operator = mint_token(TEST_SECRET, "ops", ["jobs:admin"], "u", 600)
            await page.fill("#token", operator)
            await page.click("#login-form button")
            pending_row = page.locator(f"tr[data-job-id='{pending['_id']}']")
            failed_row = page.locator(f"tr[data-job-id='{failed['_id']}']")
            await expect(pending_row).to_contain_text(MARKUP, timeout=15_000)
            await expect(failed_row).to_contain_text(f"Refused {MARKUP}", timeout=15_000)
            await failed_row.click()  # the job's detail: its type and its error
            await expect(page.locator("#detail-fields")).to_contain_text(MARKUP)
            await expect(page.locator("#detail-error")).to_contain_text(f"Refused {MARKUP}")

            assert await page.locator("#injected").count() == 0
            assert await page.locator("#dashboard img").count() == 0
            assert await page.evaluate("window.__pwned") is None
            assert errors == []
        finally:
            await browser.close()


# --- dead letters: replay goes back once; the dead-lettered series ---


async def _dead_letter(raw_publisher, body: bytes, **properties) -> None:
    """Into the dead queue as a message the consumer refused: through the dead exchange."""
    exchange = await raw_publisher.channel.get_exchange(raw_publisher.topology.dead_exchange)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
        routing_key="encounter_package.create",
    )


async def _settled_count(queue_count, expected: int, timeout: float = 15) -> int:
    """The count once it reached `expected` and stayed there for a second (a duplicate would
    arrive meanwhile), or what it is at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await queue_count() >= expected:
            await asyncio.sleep(1.0)
            return await queue_count()
        await asyncio.sleep(0.1)
    return await queue_count()


async def test_a_replayed_dead_letter_goes_back_once(settings, raw_publisher, start_consumer):
    from service.messaging.dead_letters import DeadLetters

    dead = DeadLetters(settings.amqp_url, raw_publisher.topology)
    job_id = new_job_id()
    await _dead_letter(raw_publisher, orjson.dumps(example("encounter_package")), message_id=job_id)
    await _dead_letter(raw_publisher, b"garbage", message_id="../not-a-job-id")
    assert await _settled_count(dead.count, 2) == 2

    # Replayed with no consumer running: each is in the jobs queue once, and gone from the dead.
    assert await dead.replay() == 2
    assert await dead.count() == 0
    assert await _settled_count(lambda: _jobs_queue_count(settings), 2) == 2

    # Consumed: the valid one is processed; the one that fails again is dead-lettered again,
    # once, as it was.
    await start_consumer()
    assert await _settled_count(dead.count, 1) == 1
    (again,) = await raw_publisher.dead_letters(expected=1)
    assert again.body == b"garbage" and again.message_id == "../not-a-job-id"
    assert await _jobs_queue_count(settings) == 0


async def test_a_replayed_dead_letter_whose_job_was_set_aside_writes_nothing(
    settings, db, raw_publisher, start_consumer
) -> None:
    """The consumer ends a dead-lettered message's job at once (`set_aside`, "submit it
    again"); the message replayed afterwards finds its job terminal: acked, nothing written,
    the job as it was (its client may have submitted again already)."""
    from service.messaging.dead_letters import DeadLetters
    from service.storage.entities import EntityStore
    from service.usecases.reconciler import SET_ASIDE, JobReconciler

    async def cannot_say() -> None:
        return None

    submission = example("encounter_package")
    job_id = new_job_id()
    store = JobStore(db)
    await store.create_pending(new_job(job_id=job_id, hash=submission_hash(submission)))
    await _dead_letter(raw_publisher, orjson.dumps(submission), message_id=job_id)
    reconciler = JobReconciler(
        store, EntityStore(db), cannot_say, interval_seconds=30, grace_seconds=60
    )
    assert await reconciler.set_aside(job_id)  # what the consumer calls as it dead-letters
    ended = await store.get(job_id)
    assert ended["status"] == JobStatus.FAILED_WITH_ERROR and ended["error"] == SET_ASIDE.error

    dead = DeadLetters(settings.amqp_url, raw_publisher.topology)
    assert await _settled_count(dead.count, 1) == 1
    assert await dead.replay() == 1
    await start_consumer()
    deadline = time.monotonic() + 15
    while await _jobs_queue_count(settings):
        assert time.monotonic() < deadline, "the replayed message was not taken"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a write would have happened by now
    assert await store.get(job_id) == ended
    assert sum((await entity_counts(db)).values()) == 0
    assert await dead.count() == 0  # acked, not dead-lettered again


async def test_the_dead_lettered_series_counts_each_message_dead_lettered(
    api, raw_publisher, start_consumer
) -> None:
    async def dead_lettered() -> float:
        text = await (await api.get("/metrics")).text()
        found = re.search(r"^medevents_consumer_dead_lettered_total (\S+)$", text, re.MULTILINE)
        assert found, "the series is not served"
        return float(found.group(1))

    await start_consumer()
    before = await dead_lettered()
    await raw_publisher.publish(b"garbage", message_id="../not-a-job-id")
    await raw_publisher.publish(b"[]", message_id="also not a job id!")
    assert len(await raw_publisher.dead_letters(expected=2)) == 2
    assert await dead_lettered() == before + 2

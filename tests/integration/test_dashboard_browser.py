"""The dashboard end to end, in headless Chromium (Debian's `chromium`, driven by Playwright;
no browser download): `medevents run` serving the API and the consumer, an operator signing in
with a token, jobs submitted over HTTP appearing as processed and failed, a 422 opened to its
entries, a job found by id, dead letters replayed. A screenshot is saved under
`build/screenshots/` (`docs/dashboard.png` in the README is one of them)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import orjson
import pytest
from playwright.async_api import Page, async_playwright, expect

from bench.common import wait_up
from service.api.auth import mint_token
from service.domain.jobs import new_job_id
from service.storage.embedded import free_port
from tests.conftest import TEST_SECRET
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, start_medevents
from tests.integration.test_dead_letters import dead_letter

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
# Without the background-networking flags Chromium keeps calling out, and this machine's
# closed network refuses it (see the machine notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The consumer writes its counts every 5 s and the page refreshes every 3 s.
SEEN_WITHIN_MS = 20_000


async def submit(http: aiohttp.ClientSession, base: str, patient: str, data: dict) -> str:
    token = mint_token(TEST_SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], "u", 600)
    async with http.post(
        f"{base}/api/patients/{patient}/encounter_package",
        json=data,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 202, await response.text()
        return (await response.json())["data"]["links"][0]["href"].rsplit("/", 1)[-1]


async def refused(http: aiohttp.ClientSession, base: str, patient: str, data: dict) -> dict:
    """A submission the API answers at once, without a job: its error envelope."""
    token = mint_token(TEST_SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], "u", 600)
    async with http.post(
        f"{base}/api/patients/{patient}/encounter_package",
        json=data,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return {"status": response.status, **await response.json()}


async def finished(http: aiohttp.ClientSession, base: str, job_id: str) -> dict:
    token = mint_token(TEST_SECRET, DEMO_CLIENT, ["job:read"], "u", 600)
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{base}/api/jobs/{job_id}?wait=20", headers=headers) as response:
        body = await response.json()
    assert body["data"]["status"] != "pending", body
    return body["data"]


async def admin_status(http: aiohttp.ClientSession, base: str, token: str, job_id: str) -> str:
    """The job's status once it is terminal, as an operator reads it."""
    for _ in range(100):
        async with http.get(
            f"{base}/api/admin/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            if response.status == 200:
                status = (await response.json())["data"]["status"]
                if status != "pending":
                    return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{job_id} did not finish")


async def number(page: Page, test_id: str) -> int:
    text = await page.get_by_test_id(test_id).text_content()
    return int(text.rstrip("+")) if text and text.rstrip("+").isdigit() else -1


async def until(page: Page, test_id: str, check, timeout_ms: int = SEEN_WITHIN_MS) -> int:
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    while True:
        value = await number(page, test_id)
        if check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{test_id} is {value}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_an_operator_watches_jobs_finish_and_replays_dead_letters(
    settings, db, patients, raw_publisher, tmp_path
) -> None:
    assert CHROMIUM, "Debian's chromium is missing: run scripts/ensure-test-tools"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "service.log").open("ab") as output:
        service = start_medevents(
            "run",
            settings,
            tmp_path / "data",
            output,
            JWT_SECRET=TEST_SECRET,
            HTTP_PORT=str(port),
            SIGNATURE_MODE="decode",  # the examples' packages are unsigned
        )
    try:
        await wait_up(f"{base}/health/ready")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{base}/dashboard")

            # A token without the operator scope is turned away, with the reason.
            reader = mint_token(TEST_SECRET, "ops", ["job:read"], "u", 600)
            await page.fill("#token", reader)
            await page.click("#login-form button")
            await expect(page.get_by_test_id("login-error")).to_contain_text("jobs:admin")
            await expect(page.locator("#dashboard")).to_be_hidden()

            operator = mint_token(TEST_SECRET, "ops", ["jobs:admin"], "u", 600)
            await page.fill("#token", operator)
            await page.click("#login-form button")
            await expect(page.locator("#dashboard")).to_be_visible()
            processed_before = await until(page, "processed-count", lambda n: n >= 0)
            failed_before = await until(page, "failed-count", lambda n: n >= 0)

            async with aiohttp.ClientSession() as http:
                valid = await submit(
                    http, base, ACTIVE_PATIENT, example("encounter_package")["data"]
                )
                invalid_data = example("failed_422_invalid_package", new_ids=False)["data"]
                invalid = await submit(http, base, ACTIVE_PATIENT, invalid_data)
                # An unknown patient: over HTTP, refused at once; from a producer, a 404 job.
                unknown_patient = example("failed_404_unknown_patient")
                answer = await refused(
                    http, base, unknown_patient["patient_id"], unknown_patient["data"]
                )
                assert answer["status"] == 404 and answer["error"]["type"] == "not_found"
                unknown = new_job_id()
                await raw_publisher.publish(unknown_patient, message_id=unknown)
                outcomes = {
                    job: await finished(http, base, job) for job in (valid, invalid, unknown)
                }
            assert outcomes[valid]["status"] == "processed"
            assert outcomes[invalid]["status_code"] == "422"
            assert outcomes[unknown]["status_code"] == "404"

            # The counters move by themselves.
            await until(page, "processed-count", lambda n: n >= processed_before + 1)
            await until(page, "failed-count", lambda n: n >= failed_before + 2)
            failures = page.get_by_test_id("failures-table")
            await expect(failures.locator(f"tr[data-job-id='{invalid}']")).to_be_visible(
                timeout=SEEN_WITHIN_MS
            )

            # Dead letters counted (replayed below).
            dead_ids = [new_job_id() for _ in range(2)]
            for job_id in dead_ids:
                body = orjson.dumps(example("encounter_package"))
                await dead_letter(raw_publisher, body, message_id=job_id)
            await until(page, "dead-letters", lambda n: n == 2)

            # A 422 opens to its JSONPath entries and their rules.
            await failures.locator(f"tr[data-job-id='{invalid}']").click()
            entries = page.get_by_test_id("detail-invalid")
            await expect(entries).to_be_visible()
            assert await entries.locator("tbody tr").count() == len(
                outcomes[invalid]["error"]["invalid"]
            )
            first = outcomes[invalid]["error"]["invalid"][0]
            await expect(entries).to_contain_text(first["entry"])
            await expect(entries).to_contain_text(first["rules"][0]["rule"])

            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

            # A job found by id, with its links.
            await page.fill("#search-id", valid)
            await page.click("#search-form button")
            await expect(page.get_by_test_id("detail")).to_contain_text(valid)
            await expect(page.get_by_test_id("detail-links")).to_contain_text("encounter")
            await page.fill("#search-id", new_job_id())
            await page.click("#search-form button")
            await expect(page.get_by_test_id("search-error")).to_contain_text("not found")

            # The dead letters replayed, gone (processed by the consumer).
            await page.get_by_test_id("replay").click()
            await expect(page.get_by_test_id("replay-result")).to_have_text("replayed 2")
            await until(page, "dead-letters", lambda n: n == 0)
            async with aiohttp.ClientSession() as http:
                for job_id in dead_ids:  # published by a producer: read as the operator
                    assert await admin_status(http, base, operator, job_id) == "processed"

            # The page never shows the token, nor a package's contents.
            html = await page.content()
            assert operator not in html and reader not in html
            assert "Cashew nuts" not in html and "eHealth/ICPC2/reasons" not in html
            assert errors == []
            await browser.close()
    finally:
        service.terminate()
        assert service.wait(timeout=60) == 0

"""Scale-out: 2 API processes and 3 consumer processes on one broker and one MongoDB server.
Every submission is processed exactly once: each job finished by one consumer, once, and every
package stored whole."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from bench.common import wait_up
from service.storage.embedded import free_port
from tests.conftest import TEST_SECRET, bearer
from tests.harness import (
    ACTIVE_PATIENT,
    DEMO_CLIENT,
    entity_counts,
    example,
    package_entity_count,
    start_medevents,
    wait_for_jobs,
)

SUBMISSIONS = 150


def consumers_that_finished(logs: list[Path]) -> dict[str, int]:
    """Which consumer finished each job, from their log lines; no job finished or even seen
    twice."""
    finished_by: dict[str, int] = {}
    for number, log in enumerate(logs):
        for line in log.read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "job_finished":
                assert event["job_id"] not in finished_by, "a job finished twice"
                finished_by[event["job_id"]] = number
            assert event.get("event") != "job_already_finished", "a job delivered twice"
    return finished_by


@pytest.mark.timeout(240)
async def test_two_apis_and_three_consumers_process_each_job_exactly_once(
    settings, db, patients, tmp_path
):
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"consumer-{n}.log" for n in range(3)]
    apis = [
        start_medevents(
            "api",
            settings,
            tmp_path / "data",
            JWT_SECRET=TEST_SECRET,
            HTTP_PORT=str(port),
            LOG_LEVEL="warning",
        )
        for port in ports
    ]
    consumers = []
    for log in logs:
        with log.open("ab") as output:
            consumers.append(
                start_medevents(
                    "consumer",
                    settings,
                    tmp_path / "data",
                    output,
                    CONSUMER_PREFETCH="8",
                    SIGNATURE_MODE="decode",  # the examples' packages are unsigned
                )
            )
    try:
        for port in ports:
            await wait_up(f"http://127.0.0.1:{port}/health/ready")
        write = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
        submissions = [example("encounter_package") for _ in range(SUBMISSIONS)]
        urls = itertools.cycle(
            f"http://127.0.0.1:{port}/api/patients/{ACTIVE_PATIENT}/encounter_package"
            for port in ports
        )
        async with aiohttp.ClientSession() as http:

            async def submit(submission: dict, url: str) -> str:
                async with http.post(url, json=submission["data"], headers=write) as response:
                    assert response.status == 202
                    body = await response.json()
                    return body["data"]["links"][0]["href"].rsplit("/", 1)[-1]

            job_ids = await asyncio.gather(*(submit(s, next(urls)) for s in submissions))

        jobs = await wait_for_jobs(db, list(job_ids), timeout=180)
        assert [job["status"] for job in jobs.values()] == [1] * SUBMISSIONS
        assert all(job["attempts"] == 1 for job in jobs.values())
        assert await entity_counts(db) == {
            collection: SUBMISSIONS * count
            for collection, count in package_entity_count(submissions[0]).items()
        }
    finally:
        for process in apis + consumers:
            process.send_signal(signal.SIGTERM)
        for process in apis + consumers:
            assert process.wait(timeout=60) == 0

    finished_by = consumers_that_finished(logs)
    assert set(finished_by) == set(job_ids)
    assert len(set(finished_by.values())) == 3  # the three consumers shared the work

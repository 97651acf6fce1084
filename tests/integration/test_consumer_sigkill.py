"""The consumer process killed with SIGKILL in the middle of a batch of 500, three times, and
restarted: every job ends terminal with the right outcome, no entity is written twice; a
process stopped with SIGTERM under load drains what it holds and exits cleanly, and the last
one, stopped when the work is done, too."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from service.domain.jobs import JobStatus, new_job_id
from tests.harness import (
    entity_counts,
    example,
    package_entity_count,
    start_medevents,
    wait_for_jobs,
)

VALID, UNKNOWN_PATIENT, INVALID = 440, 30, 30


def start_consumer_process(settings, log_file: Path) -> subprocess.Popen:
    with log_file.open("ab") as output:
        return start_medevents(
            "consumer",
            settings,
            log_file.parent / "data",
            output,
            CONSUMER_PREFETCH="16",
            SIGNATURE_MODE="decode",  # the examples' packages are unsigned
        )


async def finished_count(db) -> int:
    return await db["jobs"].count_documents({"status": {"$ne": int(JobStatus.PENDING)}})


async def wait_until_finished(db, at_least: int, process: subprocess.Popen, timeout: float = 60):
    for _ in range(int(timeout / 0.02)):
        if await finished_count(db) >= at_least:
            return
        assert process.poll() is None, "the consumer process died by itself"
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} jobs finished in {timeout}s")


def log_events(log_file: Path, since: int) -> list[str]:
    """The events a process logged to `log_file` after byte `since` (JSON lines)."""
    with log_file.open("rb") as logs:
        logs.seek(since)
        lines = logs.read().decode("utf-8", "replace").splitlines()
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@pytest.mark.faults
@pytest.mark.timeout(400)
async def test_sigkill_in_the_middle_of_a_batch(settings, db, patients, publisher, tmp_path):
    valid = [example("encounter_package") for _ in range(VALID)]
    unknown_patient = [example("failed_404_unknown_patient") for _ in range(UNKNOWN_PATIENT)]
    invalid = [example("failed_422_invalid_package") for _ in range(INVALID)]
    expected: dict[str, tuple[int, int]] = {}
    for submissions, outcome in (
        (valid, (JobStatus.PROCESSED, 200)),
        (unknown_patient, (JobStatus.FAILED, 404)),
        (invalid, (JobStatus.FAILED, 422)),
    ):
        for submission in submissions:
            job_id = new_job_id()
            expected[job_id] = outcome
            await publisher.publish(submission, job_id, request_id=job_id)

    log_file = tmp_path / "consumer.log"
    kills = 0
    for kill_after in (len(expected) // 5, 2 * len(expected) // 5, 3 * len(expected) // 5):
        process = start_consumer_process(settings, log_file)
        await wait_until_finished(db, kill_after, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
    killed_with = await finished_count(db)
    assert killed_with < len(expected), "the kills came too late to interrupt anything"

    # SIGTERM under load: the messages it holds are finished (or handed back), exit 0.
    since = log_file.stat().st_size
    process = start_consumer_process(settings, log_file)
    await wait_until_finished(db, 4 * len(expected) // 5, process)
    process.send_signal(signal.SIGTERM)
    assert await finished_count(db) < len(expected), "the SIGTERM came too late to find work"
    assert process.wait(timeout=60) == 0, log_file.read_text()[-3000:]
    stopping = [event for event in log_events(log_file, since) if event.get("event")]
    draining = [event for event in stopping if event["event"] == "consumer_draining"]
    assert draining and draining[0]["in_flight"] >= 1, stopping[-10:]
    names = [event["event"] for event in stopping]
    assert "consumer_stopped_with_messages_in_flight" not in names, stopping[-10:]
    assert names.index("consumer_draining") < names.index("consumer_stopped")
    terminated_with = await finished_count(db)

    process = start_consumer_process(settings, log_file)
    try:
        jobs = await wait_for_jobs(db, list(expected), timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_file.read_text()[-3000:]

    assert kills == 3
    assert killed_with < terminated_with < len(expected)
    outcomes = {job_id: (job["status"], job["status_code"]) for job_id, job in jobs.items()}
    assert outcomes == expected
    per_package = package_entity_count(valid[0])
    assert await entity_counts(db) == {
        collection: VALID * count for collection, count in per_package.items()
    }
    processed = {job_id for job_id, outcome in expected.items() if outcome[1] == 200}
    for collection, count in per_package.items():  # each package whole, under its own job
        owners = await db[collection].aggregate([{"$group": {"_id": "$job_id", "n": {"$sum": 1}}}])
        assert {row["_id"]: row["n"] async for row in owners} == dict.fromkeys(processed, count)

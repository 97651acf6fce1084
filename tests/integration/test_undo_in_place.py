"""What a job changes in place (an episode's update, close or cancel; a cancelled package's
root) is given back when the job does not end processed: its client cancelled it while a
delivery was writing, it was given up or reconciled meanwhile (issue 16, the cancel race)."""

from __future__ import annotations

import copy

import orjson
import pytest

from service.cli.demo import DEMO_EPISODE
from service.domain.entities import ENCOUNTER, EPISODE
from service.domain.jobs import JobOutcome, JobStatus, new_job_id
from service.storage.entities import EntityStore
from service.usecases.processing import Delivery
from tests.harness import EXAMPLES, example
from tests.integration.conftest import make_processor


def episode_job(name: str) -> dict:
    submission = copy.deepcopy(orjson.loads((EXAMPLES / f"episode_{name}.json").read_bytes()))
    submission["params"] = {"episode_id": DEMO_EPISODE}
    return submission


def cancelled_meanwhile(processor, db) -> list:
    """The job's client cancels it between the job's writes and its end; returns the outcomes
    the job had reached and the episode as the cancel found it."""
    finish = processor.jobs.finish
    seen: list = []

    async def finish_after_a_cancel(job_id, outcome, **options):
        seen.append((outcome.status, await db["episodes"].find_one({"_id": DEMO_EPISODE})))
        await finish(job_id, JobOutcome.cancelled())
        return await finish(job_id, outcome, **options)

    processor.jobs.finish = finish_after_a_cancel
    return seen


@pytest.mark.parametrize("name", ["update", "close", "cancel"])
async def test_an_episode_change_cancelled_mid_flight_is_given_back(db, patients, name):
    episodes = db["episodes"]
    before = await episodes.find_one({"_id": DEMO_EPISODE})
    processor = make_processor(db)
    seen = cancelled_meanwhile(processor, db)
    submission = episode_job(name)
    if name == "cancel":  # a cancel needs a reason and the episode without entities: as sent
        submission["data"] = example("episode_cancel", new_ids=False)["data"]

    job = await processor.process(Delivery(new_job_id(), orjson.dumps(submission)))

    assert (job["status"], job["status_code"]) == (JobStatus.FAILED, 499), job.get("error")
    [(reached, as_changed)] = seen
    assert reached == JobStatus.PROCESSED  # the change was made before the cancel won
    assert as_changed["changed_by_job"] == job["_id"] and as_changed != before
    after = await episodes.find_one({"_id": DEMO_EPISODE})
    unchanged = {key: value for key, value in after.items() if key != "updated_at"}
    assert unchanged == {key: value for key, value in before.items() if key != "updated_at"}


async def test_an_episode_change_processed_stays_and_a_later_undo_of_another_job_leaves_it(
    db, patients
):
    processor = make_processor(db)
    job = await processor.process(Delivery(new_job_id(), orjson.dumps(episode_job("update"))))
    assert job["status"] == JobStatus.PROCESSED
    await EntityStore(db).undo(new_job_id())
    episode = await db["episodes"].find_one({"_id": DEMO_EPISODE})
    assert episode["name"] == "Influenza A, winter 2026"


async def test_fields_set_on_a_package_root_are_given_back(db, patients):
    entities = EntityStore(db)
    patient = "5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f"
    await db["encounters"].insert_one(
        {"_id": "e-1", "patient_id": patient, "status": "finished", "explanatory_letter": "old"}
    )
    job_id = new_job_id()
    reason = {"cancellation_reason": {"coding": [{"code": "misspelling"}]}}
    await entities.set_fields(
        ENCOUNTER, patient, "e-1", job_id, {**reason, "explanatory_letter": "new"}
    )
    await entities.set_fields(  # a delivery again: what was before the first is kept
        ENCOUNTER, patient, "e-1", job_id, {**reason, "explanatory_letter": "newer"}
    )
    changed = await db["encounters"].find_one({"_id": "e-1"})
    assert changed["explanatory_letter"] == "newer" and changed["changed_by_job"] == job_id

    await entities.undo(job_id)

    restored = await db["encounters"].find_one({"_id": "e-1"})
    restored.pop("updated_at", None)
    assert restored == {
        "_id": "e-1",
        "patient_id": patient,
        "status": "finished",
        "explanatory_letter": "old",
    }


async def test_two_jobs_cannot_both_change_an_episode_read_before_either(db, patients):
    entities = EntityStore(db)
    patient = "5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f"
    first, second = new_job_id(), new_job_id()
    assert await entities.change_episode(
        patient, DEMO_EPISODE, first, {"status": "closed"}, from_statuses=("active",)
    )
    assert not await entities.change_episode(
        patient, DEMO_EPISODE, second, {"name": "x"}, from_statuses=("active",)
    )
    assert (await db[EPISODE.collection].find_one({"_id": DEMO_EPISODE}))["status"] == "closed"

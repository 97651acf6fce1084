"""Recording a submission as a pending job when the job met under its id vanishes before it
is read (`PendingJobs.create`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.domain.jobs import NewJob
from service.storage.mongo import StoreUnavailable
from service.usecases.submissions import CREATE_TRIES, PendingJobs

ETA = datetime(2030, 1, 1, tzinfo=UTC)


class VanishingStore:
    """`JobStore.create_pending` as MongoDB answers it when the job stored under the id is
    removed (the retention sweep) between the insert that meets it and the read of it:
    `(None, False)`, `vanishing` times, then the insert succeeds."""

    def __init__(self, vanishing: int) -> None:
        self.vanishing = vanishing
        self.calls = 0

    async def create_pending(self, job: NewJob) -> tuple[dict[str, Any] | None, bool]:
        self.calls += 1
        if self.calls <= self.vanishing:
            return None, False
        return {"_id": job.job_id, "hash": job.hash}, True


async def create(store: VanishingStore) -> tuple[dict[str, Any], bool]:
    pending = PendingJobs(store)  # a stand-in for JobStore
    return await pending.create(
        "job-1",
        job_type="encounter_package.create",
        client_id="client",
        user_id="user",
        patient_id="patient",
        request_hash="hash-1",
        request_id="request-1",
        eta=ETA,
    )


async def test_a_job_that_vanishes_before_it_is_read_is_inserted_again() -> None:
    store = VanishingStore(vanishing=1)
    job, new = await create(store)
    assert (job, new) == ({"_id": "job-1", "hash": "hash-1"}, True)
    assert store.calls == 2


async def test_a_job_that_keeps_vanishing_is_a_store_outage_retried_later() -> None:
    store = VanishingStore(vanishing=CREATE_TRIES)
    with pytest.raises(StoreUnavailable):
        await create(store)
    assert store.calls == CREATE_TRIES

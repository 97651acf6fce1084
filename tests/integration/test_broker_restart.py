"""RabbitMQ stopped and started in the middle of a run (`rabbitmqctl stop_app` /
`start_app`): the API answers 503 while it is down, never 500; the consumer and the API's
publisher reconnect by themselves; every accepted job ends processed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, wait_for_jobs

WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


async def rabbitmqctl(*args: str) -> None:
    await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", *args], check=True, timeout=120)


@pytest.mark.faults
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs the local broker's CLI")
@pytest.mark.timeout(240)
async def test_the_broker_restarting_in_the_middle_of_a_run(api, db, start_consumer):
    await start_consumer()
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    accepted: list[str] = []
    statuses: list[int] = []

    async def submit() -> None:
        response = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
        statuses.append(response.status)
        body = await response.json()
        if response.status == 202:
            accepted.append(body["data"]["links"][0]["href"].rsplit("/", 1)[-1])
        else:
            assert body["error"]["type"] == "service_unavailable", body

    for _ in range(5):
        await submit()
    await rabbitmqctl("stop_app")
    try:
        for _ in range(3):  # the broker is down: 503 in the envelope, no job left behind
            await submit()
        assert statuses[-3:] == [503, 503, 503]
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")
    for _ in range(120):  # the publisher reconnects by itself
        await submit()
        if statuses[-1] == 202:
            break
        await asyncio.sleep(0.5)
    for _ in range(5):
        await submit()

    assert 500 not in statuses
    assert len(accepted) >= 11
    jobs = await wait_for_jobs(db, accepted, timeout=120)  # the consumer reconnected too
    assert [job["status"] for job in jobs.values()] == [1] * len(accepted)
    assert await db["jobs"].count_documents({"status": 0}) == 0

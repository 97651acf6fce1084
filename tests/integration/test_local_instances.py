"""Two local instances (`make run` twice, each its own DATA_DIR, `AMQP_PREFIX` unset) on one
broker: each processes its own jobs, none takes the other's messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from consumers.processors import builtin_registry
from consumers.worker import build_consumer
from service.bootstrap import Services
from service.cli.demo import write_demo_records
from service.config import Settings
from service.domain.jobs import JobStatus
from service.domain.principal import Principal
from service.messaging.broker import delete_topology
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, wait_for_jobs

WRITER = Principal.from_scope_text("user-1", DEMO_CLIENT, "job:read encounter:write")
JOBS_EACH = 20


def local_settings(test_settings: Settings, data_dir: Path, name: str) -> Settings:
    """What `make run` reads in DATA_DIR (no MONGODB_URL, no AMQP_PREFIX), on the test's
    MongoDB server (a database of its own, as its embedded server would be)."""
    settings = Settings.from_env({"DATA_DIR": str(data_dir), "AMQP_URL": test_settings.amqp_url})
    return settings.with_changes(
        mongodb_url=test_settings.mongodb_url,
        mongodb_db=f"{test_settings.mongodb_db}_{name}",
        signature_mode="decode",
    )


@contextlib.asynccontextmanager
async def instance(settings: Settings) -> AsyncIterator[Services]:
    """`medevents run` without its HTTP server: the API's services and a consumer."""
    services = Services(settings, builtin_registry())
    try:
        await services.prepare_storage()
        await write_demo_records(services.patients, services.registries, services.entities)
        await build_consumer(services).start()
        yield services
    finally:
        with contextlib.suppress(Exception):
            await services.mongo_client.drop_database(settings.mongodb_db)
        await services.aclose()
        await delete_topology(settings.amqp_url, services.topology)


async def test_two_local_instances_each_process_their_own_jobs(settings, tmp_path) -> None:
    first_settings = local_settings(settings, tmp_path / "first", "first")
    second_settings = local_settings(settings, tmp_path / "second", "second")
    assert first_settings.amqp_prefix != second_settings.amqp_prefix
    job_type = builtin_registry().get("encounter_package.create")
    assert job_type is not None
    async with instance(first_settings) as first, instance(second_settings) as second:
        assert first.topology.queue != second.topology.queue
        assert first.topology.events_exchange != second.topology.events_exchange
        instances = {"first": first, "second": second}

        async def submit(name: str, n: int) -> tuple[str, str]:
            data = example("encounter_package")["data"]
            job, new = await instances[name].job_service.submit(
                WRITER, job_type, ACTIVE_PATIENT, data, f"{name}-{n}"
            )
            assert new
            return name, job["_id"]

        submitted: dict[str, list[str]] = {"first": [], "second": []}
        for name, job_id in await asyncio.gather(
            *(submit(name, n) for n in range(JOBS_EACH) for name in instances)
        ):
            submitted[name].append(job_id)
        for name, services in (("first", first), ("second", second)):
            jobs = await wait_for_jobs(services.database, submitted[name])
            assert [jobs[job_id]["status"] for job_id in submitted[name]] == (
                [JobStatus.PROCESSED] * JOBS_EACH
            ), name
            # No job of the other instance was made here from a message taken from it.
            assert await services.database["jobs"].count_documents({}) == JOBS_EACH

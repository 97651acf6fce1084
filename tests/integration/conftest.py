"""Fixtures of the tests that need the real parts: a MongoDB wire-protocol server per test
session, a database per test, the machine's RabbitMQ with exchanges and queues per test.

With `MONGODB_URL` set, the same suite runs against that server instead of starting the
embedded one (each test still gets its own database, dropped afterwards); `AMQP_URL` names
another broker.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from consumers.consumer import JobConsumer
from consumers.processors import builtin_registry
from schemas.jobs import JOB_RESPONSE_FIELDS
from service.api.app import create_app
from service.bootstrap import Services
from service.cli.demo import write_demo_records
from service.config import Settings
from service.messaging.broker import Topology, delete_topology
from service.messaging.job_queue import JobQueue
from service.messaging.publisher import SubmissionPublisher
from service.signatures import Base64JsonDecoder
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.job_types import JobTypeRegistry
from service.usecases.processing import SubmissionProcessor
from tests.conftest import TEST_SECRET
from tests.harness import RawPublisher
from tests.integration.webhook_harness import delete_test_topologies
from tests.rabbitmq_node import RabbitMQNode, RabbitMQUnavailable
from tests.rabbitmq_node import rabbitmq_node as start_node


@pytest.fixture
def settings(mongodb_url: str, tmp_path: Path) -> Settings:
    run = uuid.uuid4().hex[:16]
    return Settings(
        mongodb_url=mongodb_url,
        mongodb_db=f"test_{run}",
        amqp_url=os.environ.get("AMQP_URL") or Settings().amqp_url,
        # Exchanges and queues of their own on the shared broker, deleted afterwards.
        amqp_prefix=f"test.{run}.",
        jwt_secret=TEST_SECRET,
        data_dir=tmp_path / "data",
        max_request_bytes=64 * 1024,
        # Most tests send unsigned packages; the signature tests build a CMS verifier.
        signature_mode="decode",
    )


@pytest.fixture(autouse=True)
async def _delete_test_topology(settings: Settings) -> AsyncIterator[None]:
    """The test's exchanges and queues go from the shared broker (the jobs' and the
    webhooks', declared by every app and consumer)."""
    yield
    await delete_test_topologies(settings.amqp_url, settings.amqp_prefix)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[AsyncDatabase]:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_url, tz_aware=True)
    yield client[settings.mongodb_db]
    await client.drop_database(settings.mongodb_db)
    await client.close()


@pytest.fixture
def store(db: AsyncDatabase) -> JobStore:
    """The job store as the service builds it (a poll reads what its response renders)."""
    return JobStore(db, read_fields=JOB_RESPONSE_FIELDS)


def app_for(settings: Settings) -> web.Application:
    """The real app, over what the bootstrap builds from `settings` (closed by the app)."""
    return create_app(Services(settings, builtin_registry()))


@pytest.fixture
async def api(aiohttp_client, settings: Settings, db: AsyncDatabase):
    """A test client of the real app, on the test database (dropped by `db` afterwards)."""
    return await aiohttp_client(app_for(settings))


@pytest.fixture
async def services(settings: Settings, db: AsyncDatabase) -> AsyncIterator[Services]:
    """What the bootstrap builds from the test's settings, closed afterwards."""
    async with Services(settings, builtin_registry()) as built:
        yield built


@pytest.fixture
async def patients(db: AsyncDatabase) -> PatientStore:
    """The records the examples refer to (`service.cli.demo`): the patients (one active, one
    inactive), the demo MIS's legal entity, division, doctor and dictionaries, and an open
    episode of the active patient."""
    store = PatientStore(db)
    await write_demo_records(store, RegistryStore(db), EntityStore(db))
    return store


def make_processor(db: AsyncDatabase, registry: JobTypeRegistry | None = None, **options):
    options.setdefault("registries", RegistryStore(db))
    options.setdefault("signatures", Base64JsonDecoder())
    return SubmissionProcessor(
        JobStore(db), EntityStore(db), PatientStore(db), registry or builtin_registry(), **options
    )


@pytest.fixture
async def start_consumer(settings: Settings, db: AsyncDatabase, patients):
    """Starts in-process consumers on the test database and topology; stops them after."""
    started: list[JobConsumer] = []

    async def start(registry: JobTypeRegistry | None = None, **options) -> JobConsumer:
        await EntityStore(db).ensure_indexes()
        consumer = JobConsumer(
            JobQueue(settings.amqp_url, Topology(settings.amqp_prefix), prefetch=8),
            make_processor(db, registry, **options),
        )
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop(drain_seconds=5)


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[SubmissionPublisher]:
    submissions = SubmissionPublisher(settings.amqp_url, Topology(settings.amqp_prefix))
    yield submissions
    await submissions.close()


@pytest.fixture
async def raw_publisher(settings: Settings) -> AsyncIterator[RawPublisher]:
    async with RawPublisher(settings) as raw:
        yield raw


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """A RabbitMQ node of the session's own (`tests/rabbitmq_node.py`), for the tests that stop
    a broker or close its connections: never the machine's shared one. Started once, on first
    use (a few seconds), stopped and removed at the end. No RabbitMQ installed: the tests that
    need it fail, with how to install it; they are never skipped."""
    with contextlib.ExitStack() as stack:
        try:
            node = stack.enter_context(start_node(tmp_path_factory.mktemp("rabbitmq-node")))
        except RabbitMQUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield node


@pytest.fixture
async def own_broker_settings(
    settings: Settings, rabbitmq_node: RabbitMQNode
) -> AsyncIterator[Settings]:
    """The test's settings on the session's own RabbitMQ node (a topology of the test's own
    there too, deleted afterwards)."""
    own = settings.with_changes(amqp_url=rabbitmq_node.amqp_url)
    yield own
    with contextlib.suppress(OSError):  # the node is down: nothing to delete
        await delete_topology(own.amqp_url, Topology(own.amqp_prefix))

"""Helpers of the consumer tests: example submissions, raw publishing, waiting for jobs."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pika
from pymongo.asynchronous.database import AsyncDatabase

from service.cli import demo
from service.cli.publish import renewed, with_new_ids
from service.config import Settings
from service.domain.entities import ALL_ENTITY_KINDS
from service.domain.jobs import JobStatus
from service.messaging.broker import Topology, declare_topology
from service.signatures import decode_unsigned
from service.storage.embedded import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ACTIVE_PATIENT = demo.ACTIVE_PATIENT
INACTIVE_PATIENT = demo.INACTIVE_PATIENT
DEMO_CLIENT = demo.DEMO_CLIENT


def example(name: str, *, new_ids: bool = True) -> dict[str, Any]:
    """A submission of `examples/`, its dates moved to yesterday, with fresh entity ids
    unless told otherwise."""
    submission = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    return with_new_ids(submission, new_ids=new_ids)


def examples(*names: str) -> list[dict[str, Any]]:
    """Submissions of `examples/` renewed together: a package and its cancel keep naming the
    same (fresh) entities."""
    submissions = [orjson.loads((EXAMPLES / f"{name}.json").read_bytes()) for name in names]
    return renewed(submissions)


def package_content(submission: dict[str, Any]) -> dict[str, Any]:
    """What a submission's unsigned `signed_data` carries."""
    return decode_unsigned(submission["data"]["signed_data"])


def package_entity_count(submission: dict[str, Any]) -> dict[str, int]:
    content = package_content(submission)
    return {
        kind.collection: (
            1 if kind.package_key == "encounter" else len(content.get(kind.package_key, []))
        )
        for kind in ALL_ENTITY_KINDS
    }


async def entity_counts(db: AsyncDatabase) -> dict[str, int]:
    return {
        kind.collection: await db[kind.collection].count_documents({}) for kind in ALL_ENTITY_KINDS
    }


class RawPublisher:
    """Publishes arbitrary bytes, as a careless or hostile producer would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> RawPublisher:
        self.connection = await aio_pika.connect_robust(self.settings.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange, self.queue = await declare_topology(self.channel, self.topology)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def publish(
        self,
        body: bytes | dict | list,
        *,
        message_id: str | None,
        routing_key: str = "x",
        **properties: Any,
    ) -> None:
        if not isinstance(body, bytes):
            body = orjson.dumps(body)
        message = aio_pika.Message(
            body,
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **properties,
        )
        await self.exchange.publish(message, routing_key=routing_key)

    async def publish_without_message_id(self, body: bytes | dict, **properties: Any) -> None:
        """As a producer on another client would: aio-pika always sets a `message_id`."""
        if not isinstance(body, bytes):
            body = orjson.dumps(body)

        def send() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(self.settings.amqp_url))
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_publish(
                    self.topology.exchange,
                    "x",
                    body,
                    pika.BasicProperties(delivery_mode=2, **properties),
                )
            finally:
                connection.close()

        await asyncio.to_thread(send)

    async def dead_letters(
        self, expected: int, timeout: float = 15
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.declare_queue(self.topology.dead_queue, passive=True)
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            found.append(message)
        return found


async def wait_for_jobs(
    db: AsyncDatabase, job_ids: list[str], timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """The jobs, once every one of them has left pending. An `AssertionError` naming the jobs
    still pending, and those not even created, when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job["_id"]: job async for job in db["jobs"].find({"_id": {"$in": job_ids}})}
        done = [job for job in jobs.values() if job["status"] != JobStatus.PENDING]
        if len(done) == len(job_ids):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(_still_pending(job_ids, jobs, timeout))
        await asyncio.sleep(0.1)


def _still_pending(job_ids: list[str], jobs: dict[str, dict[str, Any]], timeout: float) -> str:
    pending = [job_id for job_id in job_ids if job_id in jobs and jobs[job_id]["status"] == 0]
    missing = [job_id for job_id in job_ids if job_id not in jobs]
    return (
        f"after {timeout} s, {len(pending) + len(missing)} of {len(job_ids)} jobs not finished: "
        f"still pending {_listed(pending)}; no job at all {_listed(missing)}"
    )


def _listed(job_ids: list[str], at_most: int = 20) -> str:
    shown = ", ".join(job_ids[:at_most])
    more = f" and {len(job_ids) - at_most} more" if len(job_ids) > at_most else ""
    return f"{len(job_ids)} [{shown}{more}]"


async def poll(api, job_id: str, headers: dict[str, str], timeout: float = 30):
    """Poll `GET /api/jobs/{id}` as a client does, until the job is no longer pending. An
    `AssertionError` naming the job and what it still answered when `timeout` seconds pass
    first (404: no such job yet, or not this client's)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await api.get(f"/api/jobs/{job_id}", headers=headers, allow_redirects=False)
        body = await response.json()
        pending = response.status == 404 or body["data"]["status"] == "pending"
        if not pending:
            return response, body
        if time.monotonic() > deadline:
            still = "404 (not found)" if response.status == 404 else "pending"
            raise AssertionError(f"job {job_id} still {still} after {timeout} s of polling")
        await asyncio.sleep(0.05)


def submission_with(submission: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(submission)
    changed.update(changes)
    return changed


def start_medevents(command: str, settings: Settings, data_dir: Path, output=None, **env: str):
    """`medevents COMMAND` in a process of its own, on the test's database and topology."""
    environment = {
        **os.environ,
        "MONGODB_URL": settings.mongodb_url or "",
        "MONGODB_DB": settings.mongodb_db,
        "AMQP_URL": settings.amqp_url,
        "AMQP_PREFIX": settings.amqp_prefix,
        "LOG_FORMAT": "json",
        "METRICS_PORT": "0",
        "DATA_DIR": str(data_dir),
        **env,
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "medevents"), command],
        env=environment,
        stdout=output if output is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
    )


class GatedProxy:
    """A TCP forwarder to `target` on a port of its own that refuses connections until
    `open()`: a server that comes up after the processes that need it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.create_task(_copy(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()

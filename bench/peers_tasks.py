"""Our processing of a submission, for the peers' workers in `bench/peers.py` (Celery's task in
`bench/peers_celery.py`, Dramatiq's actor in `bench/peers_dramatiq.py`).

Both peers run synchronous tasks in threads; our processing is asynchronous code. Each worker
process keeps one event loop (uvloop, as `medevents consumer` runs on) in a thread of its own,
with one MongoDB client on it, and a task hands its submission to that loop and waits for the
result: what a Celery or Dramatiq user with an asyncio code base does. A loop per task (or
`asyncio.run` per task) would rebuild the client and its connections every time, and rewriting
the processing on PyMongo's synchronous client would not be the same code any more. The work
is then exactly `SubmissionProcessor.process`, as `medevents consumer` runs it: decode the
envelope, validate with the same schemas, the patient and registry reads, the same writes
(job document, entities, the atomic finish) into collections with the same indexes.

Configured from the environment of the worker process (`worker_environment`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import structlog
import uvloop
from pymongo import AsyncMongoClient

from consumers.processors import builtin_registry
from service.observability.logs import configure_logging
from service.signatures import Base64JsonDecoder
from service.storage.entities import EntityStore
from service.storage.entity_reads import EntityReads
from service.storage.jobs import JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import Delivery, SubmissionProcessor

# What a peer's worker process reads from its environment.
MONGODB_URL = "PEERS_MONGODB_URL"
MONGODB_DB = "PEERS_MONGODB_DB"
QUEUE = "PEERS_QUEUE"
REDIS_URL = "PEERS_REDIS_URL"
NAMESPACE = "PEERS_NAMESPACE"
AMQP = "PEERS_AMQP_URL"
# Tasks (Celery) or messages (Dramatiq) a worker takes at once: the prefetch of ours.
CONCURRENCY = 16


def worker_environment(
    amqp_url: str, mongodb_url: str, db_name: str, queue: str, **extra: str
) -> dict[str, str]:
    """The environment of a peer's worker process: where it reads and writes, its queue, and
    logs as quiet as `medevents consumer`'s in the benchmark (warning)."""
    return {
        **os.environ,
        AMQP: amqp_url,
        MONGODB_URL: mongodb_url,
        MONGODB_DB: db_name,
        QUEUE: queue,
        "LOG_LEVEL": "warning",
        **extra,
    }


class LoopProcessing:
    """`SubmissionProcessor.process` on this process's own event loop, callable from any
    thread (`process`)."""

    def __init__(self, mongodb_url: str, db_name: str) -> None:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="processing-loop", daemon=True
        )
        self._thread.start()
        self._client: AsyncMongoClient | None = None
        self._processor: SubmissionProcessor | None = None
        self._call(self._build(mongodb_url, db_name))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _build(self, mongodb_url: str, db_name: str) -> None:
        self._client = AsyncMongoClient(mongodb_url, tz_aware=True)
        db = self._client[db_name]
        jobs, entities = JobStore(db), EntityStore(db)
        # The indexes `medevents consumer` makes (`Services.prepare_storage`): every write
        # pays for them.
        await jobs.ensure_indexes()
        await entities.ensure_indexes()
        await EntityReads(db).ensure_indexes()
        self._processor = SubmissionProcessor(
            jobs,
            entities,
            PatientStore(db),
            builtin_registry(),
            registries=RegistryStore(db),
            signatures=Base64JsonDecoder(),
        )

    def process(self, job_id: str, body: str) -> dict[str, Any]:
        """Process one submission (the JSON text ours receives as its message body) as job
        `job_id`; the job's status and status code as it ended."""
        assert self._processor is not None
        delivery = Delivery(job_id, body.encode(), job_id)
        job = self._call(self._processor.process(delivery))
        return {"status": int(job["status"]), "status_code": int(job["status_code"])}

    def close(self) -> None:
        if self._client is not None:
            self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


_processing: LoopProcessing | None = None
_lock = threading.Lock()


def processing() -> LoopProcessing:
    """This process's `LoopProcessing`, made on first use from the environment."""
    global _processing
    with _lock:
        if _processing is None:
            configure_logging("json", os.environ.get("LOG_LEVEL", "warning"))
            structlog.get_logger()
            _processing = LoopProcessing(os.environ[MONGODB_URL], os.environ[MONGODB_DB])
        return _processing

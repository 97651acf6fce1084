"""The composition root: every adapter and service a process uses, built once from `Settings`.

Every entrypoint starts here. The HTTP API (`service.api.app.create_app`), the consumer
(`consumers.worker`), `medevents run` (both in one process) and every CLI command take a
`Services` and use what it built; nothing else opens a MongoDB client or a broker connection.

Built lazily: a process builds only what it uses (`medevents token` opens nothing, `medevents
api` builds no consumer). Whatever must be closed registers its closer as it is built or
started, after whatever it was built from (building it built those first), and `aclose()`
runs the closers in the reverse order: a consumer stops before the MongoDB client it writes
with closes, whichever entrypoint started what, and whichever calls `aclose()` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from functools import cached_property
from typing import Self

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from schemas.jobs import JOB_RESPONSE_FIELDS
from service.config import ConfigError, Settings
from service.messaging.broker import Topology
from service.messaging.dead_letters import DeadLetters
from service.messaging.job_events import JobEvents
from service.messaging.job_queue import JobQueue
from service.messaging.publisher import SubmissionPublisher
from service.messaging.webhooks import WebhookBroker, WebhookDeadLetters, WebhookTopology
from service.observability.liveness import serve_probes
from service.signatures import Base64JsonDecoder, CmsSignatureVerifier, SignatureDecoder
from service.storage.consumer_stats import ConsumerStats
from service.storage.embedded import EmbeddedMongo
from service.storage.entities import EntityStore
from service.storage.entity_reads import EntityReads
from service.storage.indexes import ensure_indexes_or_later, stop_trying
from service.storage.jobs import JobStore
from service.storage.mongo import open_mongo_client
from service.storage.outcome_stats import OutcomeRecorder, OutcomeStats
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.storage.webhooks import WebhookStore
from service.usecases.dead_letters import DeadLetterService
from service.usecases.eta import EtaEstimator
from service.usecases.job_types import JobTypeRegistry
from service.usecases.jobs import JobService
from service.usecases.load_reports import LoadReporter
from service.usecases.operations import OperatorService
from service.usecases.processing import SubmissionProcessor
from service.usecases.reconciler import JobReconciler
from service.usecases.retention import RetentionSweeper
from service.usecases.webhooks import WebhookNotifier, WebhookService

Closer = Callable[[], Awaitable[None]]


@contextlib.contextmanager
def mongodb_configured(settings: Settings) -> Iterator[Settings]:
    """The settings with a MongoDB URL: the configured one, or that of the embedded server,
    started for the length of the block (local use, `MONGODB_URL` unset)."""
    if settings.mongodb_url:
        yield settings
        return
    with EmbeddedMongo(settings.data_dir) as url:
        yield settings.with_changes(mongodb_url=url)


class Services:
    """What `settings` and the job types in `registry` make: adapters, then use cases."""

    def __init__(self, settings: Settings, registry: JobTypeRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.topology = Topology(settings.amqp_prefix)
        self._closers: list[Closer] = []
        self._closing: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def on_close(self, closer: Closer) -> None:
        """Call `closer` at `aclose()`, before whatever was registered before it."""
        if self._closed:
            raise RuntimeError("these services are closed: build new ones")
        self._closers.append(closer)

    async def serve_probes(self) -> None:
        """`/metrics` and `/health/live` of a worker process (`medevents consumer`,
        `medevents webhooks`) on `METRICS_PORT` (0: none; taken by another process of the
        host: none, with a warning), closed last: they answer while the rest stops."""
        settings = self.settings
        probes = await serve_probes(
            settings.http_host, settings.metrics_port, settings.liveness_stall_seconds
        )
        if probes is not None:
            self.on_close(probes.aclose)

    async def aclose(self) -> None:
        """Close everything registered, the last registered first, each part once. A second
        caller (the other entrypoint of `medevents run`) waits for the first to finish. A
        closer that fails does not keep the others from running; its error is raised after
        them (all of them, in an `ExceptionGroup`, when more than one failed)."""
        if self._closing is None:
            self._closing = asyncio.Lock()
        async with self._closing:
            self._closed = True
            errors: list[Exception] = []
            while self._closers:
                try:
                    await self._closers.pop()()
                except Exception as exc:
                    errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("closing the services failed", errors)

    # --- MongoDB ---

    @cached_property
    def mongo_client(self) -> AsyncMongoClient:
        if not self.settings.mongodb_url:
            raise RuntimeError(
                "settings.mongodb_url is unset: start the embedded server first "
                "(bootstrap.mongodb_configured)"
            )
        client = open_mongo_client(self.settings, self.settings.mongodb_url)
        self.on_close(client.close)
        return client

    @cached_property
    def database(self) -> AsyncDatabase:
        return self.mongo_client[self.settings.mongodb_db]

    @cached_property
    def jobs(self) -> JobStore:
        # A poll reads what its response renders, nothing more.
        return JobStore(self.database, read_fields=JOB_RESPONSE_FIELDS)

    @cached_property
    def entities(self) -> EntityStore:
        return EntityStore(self.database)

    @cached_property
    def entity_reads(self) -> EntityReads:
        """The patients' lists of entities, for the HTTP API."""
        return EntityReads(self.database)

    @cached_property
    def patients(self) -> PatientStore:
        return PatientStore(self.database)

    @cached_property
    def registries(self) -> RegistryStore:
        return RegistryStore(self.database)

    @cached_property
    def signatures(self) -> SignatureDecoder:
        """How `signed_data` is read: verified against SIGNATURE_CA_FILE, or only decoded."""
        if self.settings.signature_mode == "decode":
            return Base64JsonDecoder()
        if self.settings.signature_ca_file is None:
            raise ConfigError(
                "SIGNATURE_MODE=cms needs SIGNATURE_CA_FILE (PEM CA certificates); "
                "SIGNATURE_MODE=decode verifies nothing and is for development only"
            )
        return CmsSignatureVerifier.from_pem(self.settings.signature_ca_file.read_bytes())

    @cached_property
    def consumer_stats(self) -> ConsumerStats:
        return ConsumerStats(self.database)

    @cached_property
    def outcome_stats(self) -> OutcomeStats:
        return OutcomeStats(self.database)

    async def prepare_storage(self) -> None:
        """The indexes every store needs: made now when MongoDB answers, else as soon as it
        does (a process starts, and answers 503 or holds its messages, meanwhile)."""
        indexing = await ensure_indexes_or_later(
            self.jobs, self.entities, self.entity_reads, self.webhook_store
        )
        if indexing is not None:
            self.on_close(functools.partial(stop_trying, indexing))

    # --- RabbitMQ ---

    @cached_property
    def publisher(self) -> SubmissionPublisher:
        """Submissions, published by the HTTP API and `medevents publish`."""
        publisher = SubmissionPublisher(self.settings.amqp_url, self.topology)
        self.on_close(publisher.close)
        return publisher

    @cached_property
    def job_events(self) -> JobEvents:
        """The API's subscription to job-finished events (it wakes long polls)."""
        events = JobEvents(self.settings.amqp_url, self.topology)
        self.on_close(events.close)
        return events

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.settings.amqp_url, self.topology)

    @cached_property
    def job_queue(self) -> JobQueue:
        """The consumer's connection: the jobs queue, and the events it sends."""
        queue = JobQueue(
            self.settings.amqp_url, self.topology, prefetch=self.settings.consumer_prefetch
        )
        self.on_close(queue.close)
        return queue

    # --- use cases ---

    @cached_property
    def job_service(self) -> JobService:
        """Submitting and polling, for the HTTP API."""
        estimator = EtaEstimator(self.consumer_stats, self.publisher.queue_depth)
        service = JobService(
            self.jobs,
            self.publisher,
            estimator,
            self.job_events,
            patients=self.patients,
            entities=self.entities,
        )
        # A cancelled job's webhooks (`JobService.on_job_ended`, called after a cancel).
        service.on_job_ended = self.webhook_notifier.job_ended
        return service

    @cached_property
    def dead_letter_service(self) -> DeadLetterService:
        return DeadLetterService(self.dead_letters)

    @cached_property
    def operator_service(self) -> OperatorService:
        return OperatorService(
            self.jobs, self.outcome_stats, self.publisher, self.dead_letter_service
        )

    @cached_property
    def load_reporter(self) -> LoadReporter:
        outcomes = OutcomeRecorder(self.database)
        return LoadReporter(self.consumer_stats, outcomes, self.settings.consumer_prefetch)

    @cached_property
    def processor(self) -> SubmissionProcessor:
        """From a delivered body to a finished job, for the consumer."""
        # A job a producer published straight to the broker is created by the consumer as it
        # takes the message: the messages in the queue are behind it, not ahead.
        estimator = EtaEstimator(self.consumer_stats, self.job_queue.depth)
        return SubmissionProcessor(
            self.jobs,
            self.entities,
            self.patients,
            self.registry,
            registries=self.registries,
            signatures=self.signatures,
            estimate_eta=functools.partial(estimator.eta, in_progress=True),
            outcomes=self.load_reporter.outcomes,
            on_finished=self.load_reporter.processed_in,
        )

    @cached_property
    def retention(self) -> RetentionSweeper:
        """Removes finished jobs past `JOB_TTL_DAYS`; runs beside a consumer."""
        return RetentionSweeper(self.jobs, self.settings.job_ttl_days, self.outcome_stats)

    def start_retention(self) -> None:
        self.retention.start()
        self.on_close(self.retention.stop)

    @cached_property
    def reconciler(self) -> JobReconciler:
        """Ends the pending jobs that nothing will finish (`usecases.reconciler`); runs beside
        a consumer, on the consumer's queue (its depth) and connection (the job-finished
        events)."""
        return JobReconciler(
            self.jobs,
            self.entities,
            self.job_queue.depth,
            interval_seconds=self.settings.reconcile_interval_seconds,
            grace_seconds=self.settings.job_deadline_grace_seconds,
            max_pending_seconds=self.settings.job_max_pending_seconds,
            on_ended=self.job_queue.finished,
            outcomes=self.load_reporter.outcomes,
            notify_ended=self.webhook_notifier.job_ended,
        )

    def start_reconciler(self) -> None:
        self.reconciler.start()
        self.on_close(self.reconciler.stop)

    # --- webhooks (docs/webhooks.md) ---

    @cached_property
    def webhook_store(self) -> WebhookStore:
        return WebhookStore(self.database)

    @cached_property
    def webhook_topology(self) -> WebhookTopology:
        return WebhookTopology(self.settings.amqp_prefix)

    def _webhook_broker(self) -> WebhookBroker:
        broker = WebhookBroker(
            self.settings.amqp_url, self.webhook_topology, self.settings.webhook_retry_schedule
        )
        self.on_close(broker.close)
        return broker

    @cached_property
    def webhook_notifier(self) -> WebhookNotifier:
        """Publishes the webhooks of ended jobs (the consumer, the reconciler, a cancel), on a
        connection of its own, opened at the first event to publish."""
        return WebhookNotifier(
            self.webhook_store,
            self._webhook_broker(),
            cache_seconds=self.settings.webhook_endpoint_cache_seconds,
        )

    @cached_property
    def webhook_broker_for_delivery(self) -> WebhookBroker:
        """The `medevents webhooks` worker's connection: the queue it consumes, the retries
        and dead letters it publishes."""
        return self._webhook_broker()

    @cached_property
    def webhook_service(self) -> WebhookService:
        """The clients' endpoints, for the HTTP API."""
        return WebhookService(
            self.webhook_store,
            allow_insecure=self.settings.webhook_allow_insecure,
            secret_overlap_seconds=self.settings.webhook_secret_overlap_seconds,
        )

    @cached_property
    def webhook_dead_letters(self) -> WebhookDeadLetters:
        return WebhookDeadLetters(
            self.settings.amqp_url, self.webhook_topology, self.settings.webhook_retry_schedule
        )

"""The Celery peer of `bench/peers.py`: our processing as a Celery task, RabbitMQ as its broker
(py-amqp), MongoDB as its result backend.

The worker (started by `bench/peers.py`, configured by `bench.peers_tasks.worker_environment`):

    python -m celery -A bench.peers_celery worker --pool threads --concurrency 16 \
        --prefetch-multiplier 1 --without-gossip --without-mingle --without-heartbeat

One process, 16 threads, 16 messages prefetched: what ours takes at once (CONSUMER_PREFETCH
16) in its one process. Acks late (after the task, as ours acks after the job's final write),
publisher confirms (as ours publishes), the result in MongoDB (`AsyncResult(id).state` reads it).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.peers_tasks import AMQP, CONCURRENCY, MONGODB_DB, MONGODB_URL, QUEUE, processing

TASK = "peers.process_submission"


def make_app(amqp_url: str, mongodb_url: str, db_name: str, queue: str) -> Celery:
    """The app of both sides: the worker and the benchmark that sends tasks and reads states."""
    app = Celery("peers", broker=amqp_url.replace("amqp://", "pyamqp://", 1), backend=mongodb_url)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        mongodb_backend_settings={
            "database": db_name,
            "taskmeta_collection": "celery_taskmeta",
        },
        broker_transport_options={"confirm_publish": True},
        worker_prefetch_multiplier=1,
        worker_concurrency=CONCURRENCY,
        worker_enable_remote_control=False,  # no pidbox queue on the shared broker
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=TASK)
    def process_submission(job_id: str, body: str) -> dict[str, Any]:
        return processing().process(job_id, body)

    return app


app = (
    make_app(os.environ[AMQP], os.environ[MONGODB_URL], os.environ[MONGODB_DB], os.environ[QUEUE])
    if QUEUE in os.environ
    else None
)

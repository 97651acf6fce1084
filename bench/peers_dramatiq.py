"""The Dramatiq peer of `bench/peers.py`: our processing as a Dramatiq actor, RabbitMQ as its
broker (pika), Redis as its result backend (the `Results` middleware; Dramatiq has no MongoDB
result backend).

The worker (started by `bench/peers.py`, configured by `bench.peers_tasks.worker_environment`):

    dramatiq_queue_prefetch=16 python -m dramatiq bench.peers_dramatiq --processes 1 \
        --threads 16 --queues QUEUE

One worker process, 16 threads, 16 messages prefetched: what ours takes at once in its one
process. Dramatiq acks after the actor returns; publisher confirms as ours publishes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers_tasks import AMQP, NAMESPACE, QUEUE, REDIS_URL, processing

ACTOR = "process_submission"


def make_broker(amqp_url: str, redis_url: str, namespace: str) -> tuple[RabbitmqBroker, Any]:
    """The broker with its result backend, for both sides; and the backend."""
    backend = RedisBackend(url=redis_url, namespace=namespace)
    broker = RabbitmqBroker(url=amqp_url, confirm_delivery=True)
    broker.add_middleware(Results(backend=backend))
    return broker, backend


def process_submission(job_id: str, body: str) -> dict[str, Any]:
    """The job's end, and when it ended (Dramatiq's results carry no time of their own; the
    `Results` middleware stores this as the actor returns)."""
    return {**processing().process(job_id, body), "finished": time.time()}


def make_actor(broker: RabbitmqBroker, queue: str) -> dramatiq.Actor:
    return dramatiq.actor(
        actor_name=ACTOR,
        queue_name=queue,
        broker=broker,
        store_results=True,
        max_retries=0,  # our processing retries within the job, as ours does
    )(process_submission)


if QUEUE in os.environ:
    broker, _ = make_broker(os.environ[AMQP], os.environ[REDIS_URL], os.environ[NAMESPACE])
    dramatiq.set_broker(broker)
    actor = make_actor(broker, os.environ[QUEUE])

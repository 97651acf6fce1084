"""Prometheus metrics, one registry per process (`/metrics` on the API; `METRICS_PORT` for a
consumer or a webhook worker running alone, service.observability.liveness).

Named as Prometheus asks (https://prometheus.io/docs/practices/naming/): `medevents_` first,
base units spelled out at the end (`_seconds`), `_total` on counters and only there.
Counters and histograms export no `_created` series (prometheus_client adds one per label
set by default: a timestamp that doubles the series and that no dashboard or alert reads);
`tests/integration/test_metrics_conventions.py` runs `promtool check metrics` on what the API
and a consumer serve.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# Process-wide, read at each exposition: no `_created` series, whatever the environment says.
disable_created_metrics()

HTTP_REQUESTS = Counter(
    "medevents_http_requests_total",
    "HTTP requests, by route pattern, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "medevents_http_request_duration_seconds",
    "Time to answer an HTTP request, by route pattern and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_FINISHED = Counter(
    "medevents_jobs_finished_total",
    "Jobs that reached a terminal state, by type, status and status code.",
    ["type", "status", "status_code"],
)
JOB_PROCESSING = Histogram(
    "medevents_job_processing_seconds",
    "Time from a delivery to its job's terminal state, by job type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_DEPTH = Gauge(
    "medevents_queue_depth", "Messages ready in the jobs queue, as last seen by this process."
)
REDELIVERIES = Counter(
    "medevents_consumer_redeliveries_total",
    "Messages the broker delivered again (after a crash, a stop or a failure).",
)
DEAD_LETTERED = Counter(
    "medevents_consumer_dead_lettered_total", "Messages rejected into the dead-letter queue."
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST

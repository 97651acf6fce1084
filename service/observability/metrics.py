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

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

# Process-wide, read at each exposition: no `_created` series, whatever the environment says.
disable_created_metrics()

HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HttpMetrics(Collector):
    """`medevents_http_requests_total` (by route, method and status) and
    `medevents_http_request_duration_seconds` (by route and method), as a `Counter` and a
    `Histogram` of prometheus_client export them (same names, help, labels, buckets), counted
    in plain integers by `observe` and turned into samples at each exposition.

    prometheus_client's own take a lock for each increment and resolve the labels at each
    call: about 10 µs a request, a tenth of a poll answered from memory. The API counts in
    its event loop's thread alone; the exposition copies what it reads, so a scrape from
    another thread never meets a dict changing size."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        # (route, method) -> per bucket (the last: +Inf), not cumulative; and the sum.
        self._latency: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}
        if registry is not None:
            registry.register(self)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        series = (route, method)
        buckets = self._latency.get(series)
        if buckets is None:  # the sum first: a scrape that sees the buckets finds it
            self._sums[series] = 0.0
            buckets = self._latency[series] = [0] * (len(HTTP_LATENCY_BUCKETS) + 1)
        buckets[bisect_left(HTTP_LATENCY_BUCKETS, seconds)] += 1
        self._sums[series] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "medevents_http_requests",
            "HTTP requests, by route pattern, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in list(self._requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "medevents_http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern and method.",
            labels=["route", "method"],
        )
        bounds = [floatToGoString(bound) for bound in HTTP_LATENCY_BUCKETS] + ["+Inf"]
        for series, counts in list(self._latency.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, list(counts), strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric(list(series), cumulative, self._sums[series])
        yield latency

    def describe(self) -> Iterator[Metric]:
        """Names only (what the registry checks for duplicates), no samples."""
        yield CounterMetricFamily("medevents_http_requests", "", labels=[])
        yield HistogramMetricFamily("medevents_http_request_duration_seconds", "", labels=[])


HTTP_METRICS = HttpMetrics()
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

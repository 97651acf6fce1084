"""`/metrics`: requests, finished jobs, processing time, queue depth and redeliveries."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from service.domain.jobs import new_job_id
from service.storage.embedded import free_port
from tests.conftest import bearer
from tests.harness import DEMO_CLIENT, example, poll, start_medevents


async def samples(api) -> dict[tuple[str, frozenset], float]:
    response = await api.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_requests_jobs_and_processing_are_counted(api, publisher, start_consumer):
    before = await samples(api)
    await api.get("/api/jobs/unknown", headers=bearer())
    await start_consumer()
    job_id = new_job_id()
    await publisher.publish(example("encounter_package"), job_id, request_id=job_id)
    await poll(api, job_id, bearer(client_id=DEMO_CLIENT))
    after = await samples(api)

    route = {"route": "/api/jobs/{job_id}", "method": "GET"}
    # At least ours; the poll may have met a 404 before the consumer created the job.
    assert value(after, "medevents_http_requests_total", **route, status="404") >= (
        value(before, "medevents_http_requests_total", **route, status="404") + 1
    )
    assert value(after, "medevents_http_request_duration_seconds_count", **route) > value(
        before, "medevents_http_request_duration_seconds_count", **route
    )
    finished = {"type": "encounter_package.create", "status": "processed", "status_code": "200"}
    assert value(after, "medevents_jobs_finished_total", **finished) == (
        value(before, "medevents_jobs_finished_total", **finished) + 1
    )
    processing = {"type": "encounter_package.create"}
    assert value(after, "medevents_job_processing_seconds_count", **processing) == (
        value(before, "medevents_job_processing_seconds_count", **processing) + 1
    )
    assert ("medevents_queue_depth", frozenset()) in after
    assert ("medevents_consumer_redeliveries_total", frozenset()) in after


async def test_queue_depth_is_the_brokers_count(api, publisher):
    for _ in range(3):  # no consumer runs: they wait in the queue
        job_id = new_job_id()
        await publisher.publish(example("encounter_package"), job_id, request_id=job_id)
    await asyncio.sleep(0.2)
    assert value(await samples(api), "medevents_queue_depth") == 3


def test_a_consumer_running_alone_serves_its_metrics(settings, tmp_path):
    port = free_port()
    process = start_medevents(
        "consumer", settings, tmp_path / "data", METRICS_PORT=str(port), SIGNATURE_MODE="decode"
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert process.poll() is None
                subprocess.run(["sleep", "0.1"], check=True)
        assert "medevents_jobs_finished_total" in text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


async def test_invented_job_types_do_not_become_metric_labels(api, raw_publisher, start_consumer):
    await start_consumer()
    job_ids = []
    for number in range(3):
        job_id = new_job_id()
        job_ids.append(job_id)
        submission = {**example("encounter_package"), "type": f"invented.type.{number}"}
        await raw_publisher.publish(submission, message_id=job_id)
    for job_id in job_ids:
        await poll(api, job_id, bearer(client_id=DEMO_CLIENT))
    found = await samples(api)
    labels = {
        dict(labels).get("type") for (name, labels) in found if name.startswith("medevents_jobs")
    }
    assert not any(label and label.startswith("invented") for label in labels)
    assert (
        value(
            found,
            "medevents_jobs_finished_total",
            type="unknown",
            status="failed",
            status_code="422",
        )
        >= 3
    )

"""The metrics follow Prometheus's conventions: what the API, a consumer and a webhook worker
really serve passes `promtool check metrics` (installed by scripts/ensure-test-tools) with no
finding, has no `_created` series, and names its units as Prometheus asks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.domain.jobs import new_job_id
from service.storage.embedded import free_port
from tests.conftest import bearer
from tests.harness import DEMO_CLIENT, example, poll, start_medevents

# Units not in base units, and what they should be.
NOT_BASE_UNITS = re.compile(
    r"_(milliseconds|microseconds|nanoseconds|minutes|hours|days|ms|us|ns"
    r"|kilobytes|megabytes|gigabytes|bits|percent|ratio_percent|celsius)(_|$)"
)


def promtool_findings(exposition: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/ensure-test-tools (as root)"
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = (checked.stdout + checked.stderr).strip()
    # 0: clean; 3: lint findings; 1: not even parsed (the findings say why).
    assert (checked.returncode == 0) == (findings == ""), (checked.returncode, findings)
    return findings


def assert_conventions(exposition: str) -> None:
    assert promtool_findings(exposition) == ""
    families = list(text_string_to_metric_families(exposition))
    ours = [family for family in families if family.name.startswith("medevents_")]
    assert ours, "no medevents_ metric served"
    for family in families:
        assert not NOT_BASE_UNITS.search(family.name), family.name
        for sample in family.samples:
            assert not sample.name.endswith("_created"), sample.name
    for family in ours:
        # The parser gives counters' names without `_total`: their samples carry it.
        if family.type == "counter":
            assert all(s.name == f"{family.name}_total" for s in family.samples), family.name
        else:
            assert not family.name.endswith("_total"), family.name
        if family.type == "histogram":
            # Every histogram of ours measures a time or a size, in base units.
            assert family.name.endswith(("_seconds", "_bytes")), family.name
    assert "_created" not in exposition


async def test_the_apis_metrics_pass_promtool(api, publisher, start_consumer) -> None:
    # Some of every kind: requests (a 404 and polls), a processed job and a failed one.
    await api.get("/api/jobs/unknown", headers=bearer())
    await start_consumer()
    for name in ("encounter_package", "failed_404_unknown_patient"):
        job_id = new_job_id()
        await publisher.publish(example(name), job_id, request_id=job_id)
        await poll(api, job_id, bearer(client_id=DEMO_CLIENT))
    response = await api.get("/metrics")
    assert response.status == 200
    exposition = await response.text()
    assert "medevents_job_processing_seconds_bucket{" in exposition  # a histogram with data
    assert "medevents_http_request_duration_seconds_bucket{" in exposition
    assert_conventions(exposition)


@pytest.mark.parametrize("command", ["consumer", "webhooks"])
def test_a_process_running_alone_serves_metrics_that_pass_promtool(
    settings, db, tmp_path, command
) -> None:
    port = free_port()
    process = start_medevents(
        command, settings, tmp_path / "data", METRICS_PORT=str(port), SIGNATURE_MODE="decode"
    )
    try:
        exposition = ""
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    exposition = r.read().decode()
                break
            except OSError:
                assert process.poll() is None, "the process ended"
                time.sleep(0.1)
        assert "process_cpu_seconds_total" in exposition
        assert_conventions(exposition)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_promtool_reports_what_breaks_the_conventions() -> None:
    """The check above can fail: promtool finds a counter without `_total` and a unit that
    is not a base unit."""
    bad = (
        "# HELP medevents_things Things.\n# TYPE medevents_things counter\n"
        "medevents_things 1\n"
        "# HELP medevents_wait_milliseconds A wait.\n# TYPE medevents_wait_milliseconds gauge\n"
        "medevents_wait_milliseconds 3\n"
    )
    findings = promtool_findings(bad)
    assert "medevents_things" in findings and "_total" in findings, findings
    assert "medevents_wait_milliseconds" in findings, findings

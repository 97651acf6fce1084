"""Cost per call, in microseconds: dumping each response variant, loading and validating the
example package, building a 422 with 50 errors. No network: pure CPU, median of repeats.

    .venv/bin/python bench/costs.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
from marshmallow import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.encounter_package import EncounterPackageSchema
from schemas.envelope import Meta, dump_envelope
from schemas.jobs import dump_job, dump_job_data
from schemas.validation import invalid_entries
from service.domain.entities import ALL_ENTITY_KINDS
from service.domain.jobs import JobOutcome, JobStatus, Link, entity_href
from service.usecases.submissions import parse_body

EXAMPLE = orjson.loads(
    (Path(__file__).resolve().parents[1] / "examples/encounter_package.json").read_bytes()
)
PATIENT = EXAMPLE["patient_id"]
URL = "http://127.0.0.1:8080/api/jobs/8d3f7c2a9b1e4f60a5d2c3b4e5f60718"
REQUEST_ID = "bench-request"
INVALID_50 = [
    {
        "entry_type": "json_data_property",
        "entry": f"$.data.observations[{n}].value.quantity",
        "rules": [{"rule": "required", "params": [], "description": "must be present"}],
    }
    for n in range(50)
]
OUTCOMES: dict[str, JobOutcome | None] = {
    "pending": None,
    "processed (11 links)": JobOutcome.processed(
        [
            Link(kind.entity, entity_href(PATIENT, kind.collection, str(uuid.uuid4())))
            for kind in ALL_ENTITY_KINDS
        ]
    ),
    "failed 403": JobOutcome.failed(403, "forbidden", "Missing allowances: encounter:write"),
    "failed 404": JobOutcome.failed(404, "not_found", "Patient not found"),
    "failed 409": JobOutcome.failed(409, "request_conflict", "Patient is not active"),
    "failed 422 (50 entries)": JobOutcome.validation_failed(INVALID_50),
    "failed_with_error 500": JobOutcome.failed_with_error("Unexpected error"),
}


def stored_job(outcome: JobOutcome | None) -> dict:
    """A job as `JobStore.get_for_client` returns it."""
    job = {"_id": "8d3f7c2a9b1e4f60a5d2c3b4e5f60718", "eta": datetime.now(UTC)}
    if outcome is None:
        return {**job, "status": int(JobStatus.PENDING), "status_code": 202}
    return {**job, **outcome.to_update()}


def fifty_errors() -> bytes:
    """The example package with 50 observations, each missing its required `code`."""
    submission = copy.deepcopy(EXAMPLE)
    observation = submission["data"]["observations"][0]
    observation.pop("code")
    observation.pop("diagnostic_report_id", None)
    submission["data"]["observations"] = [
        {**observation, "id": str(uuid.uuid4())} for _ in range(50)
    ]
    return orjson.dumps(submission)


def per_call(call: Callable[[], object], repeats: int, minimum_seconds: float = 0.2) -> float:
    """Median microseconds per call over `repeats` timed batches."""
    call()
    count, elapsed = 1, 0.0
    while elapsed < minimum_seconds / repeats:
        count *= 2
        started = time.perf_counter()
        for _ in range(count):
            call()
        elapsed = time.perf_counter() - started
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            call()
        timings.append((time.perf_counter() - started) / count)
    return statistics.median(timings) * 1e6


def line(name: str, microseconds: float) -> None:
    print(f"  {name:40s} {microseconds:8.1f}")


def main(repeats: int) -> None:
    print(f"microseconds per call, median of {repeats} batches")
    for name, outcome in OUTCOMES.items():
        job = stored_job(outcome)
        us = per_call(lambda job=job: dump_job(job, URL, REQUEST_ID), repeats)
        line(f"dump {name}", us)

    finished = stored_job(OUTCOMES["processed (11 links)"])
    _, data = dump_job_data(finished)
    meta = Meta(303, URL, REQUEST_ID)
    line("wrap a finished job's kept data", per_call(lambda: dump_envelope(data, meta), repeats))

    package = EncounterPackageSchema()
    body = orjson.dumps(EXAMPLE)
    line("parse the example message (JSON, keys)", per_call(lambda: parse_body(body), repeats))
    data = EXAMPLE["data"]
    line("load+validate the example package", per_call(lambda: package.load(data), repeats))

    invalid = orjson.loads(fifty_errors())["data"]

    def build_422() -> list:
        try:
            package.load(invalid)
        except ValidationError as exc:
            entries = invalid_entries(exc.messages)
            JobOutcome.validation_failed(entries)
            return entries
        raise AssertionError("the package was valid")

    assert len(build_422()) == 50
    line("a 422 with 50 errors (load+build)", per_call(build_422, repeats))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    main(parser.parse_args().repeats)

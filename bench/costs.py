"""Cost per call, in microseconds: dumping each response variant, loading and validating the
example package and the largest one the contract allows (50 observations: its envelope, its
unsigned `signed_data` decoded, its content checked with the demo dictionaries), by the
schemas' compiled loads as the service runs them and by marshmallow alone (what they replace
on the happy path; every 422 is still marshmallow's), the cost per observation of each, and
building a 422 with 50 errors. No network: pure CPU, median of repeats.

    .venv/bin/python bench/costs.py [--quick] [--repeats 7]
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

from schemas.encounter_package import PackageCreateRequestSchema
from schemas.envelope import Meta, dump_envelope
from schemas.jobs import dump_job, dump_job_data
from schemas.package_content import MAX_ENTITIES, PACKAGE_CREATE_CONTENT
from schemas.rules import marshmallow_load, use_dictionaries
from schemas.validation import invalid_entries
from service.cli.demo import DEMO_DICTIONARIES
from service.cli.publish import with_new_ids
from service.domain.entities import ALL_ENTITY_KINDS
from service.domain.jobs import JobOutcome, JobStatus, Link, entity_href
from service.signatures import Base64JsonDecoder, decode_unsigned, encode_unsigned
from service.usecases.submissions import parse_body

EXAMPLE = with_new_ids(
    orjson.loads(
        (Path(__file__).resolve().parents[1] / "examples/encounter_package.json").read_bytes()
    )
)
# The dictionaries as `RegistryStore.dictionaries` gives them: name -> codes.
DICTIONARIES = {name: frozenset(codes) for name, codes in DEMO_DICTIONARIES.items()}
ENVELOPE = PackageCreateRequestSchema()
SIGNATURES = Base64JsonDecoder()
PATIENT = EXAMPLE["patient_id"]
URL = "http://127.0.0.1:8080/api/jobs/8d3f7c2a9b1e4f60a5d2c3b4e5f60718"
REQUEST_ID = "bench-request"
INVALID_50 = [
    {
        "entry_type": "json_data_property",
        "entry": f"$.observations.[{n}].code",
        "rules": [
            {
                "rule": "required",
                "params": [],
                "description": "required property code was not present",
            }
        ],
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
    "failed 409": JobOutcome.failed(409, "request_conflict", "Person is not active"),
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
    content = decode_unsigned(submission["data"]["signed_data"])
    observation = content["observations"][0]
    observation.pop("code")
    content["observations"] = [{**observation, "id": str(uuid.uuid4())} for _ in range(50)]
    submission["data"]["signed_data"] = encode_unsigned(content)
    return orjson.dumps(submission)


def biggest_package() -> dict:
    """The example with `MAX_ENTITIES` observations, the most a valid package holds."""
    submission = copy.deepcopy(EXAMPLE)
    content = decode_unsigned(submission["data"]["signed_data"])
    observation = content["observations"][0]  # kept: the package's condition refers to it
    content["observations"] = [observation] + [
        {**observation, "id": str(uuid.uuid4())} for _ in range(MAX_ENTITIES - 1)
    ]
    submission["data"]["signed_data"] = encode_unsigned(content)
    return submission


def load_package(data: dict, *, compiled: bool = True) -> dict:
    """What a create's consumer loads: the envelope, then the content it carries; by the
    compiled loads as the service runs, or by marshmallow alone."""
    load = (lambda schema, value: schema.load(value)) if compiled else marshmallow_load
    request = load(ENVELOPE, data)
    content = SIGNATURES.decode(request["signed_data"]).content
    with use_dictionaries(DICTIONARIES):
        return load(PACKAGE_CREATE_CONTENT, content)


# The time a measurement takes at least, in all its batches (--quick: 0.1 s).
MEASURE_SECONDS = 0.5


def per_call(call: Callable[[], object], repeats: int) -> float:
    """Median microseconds per call over `repeats` timed batches."""
    minimum_seconds = MEASURE_SECONDS
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
    print(f"  {name:58s} {microseconds:9.1f}")


def main(repeats: int) -> None:
    print(f"microseconds per call, median of {repeats} batches")
    loads: dict[tuple[str, bool], float] = {}
    packages = {
        "the example package": EXAMPLE["data"],
        "50 observations": biggest_package()["data"],
    }
    for compiled in (True, False):
        how = "compiled" if compiled else "marshmallow alone"
        for name, package in packages.items():
            us = per_call(lambda p=package, c=compiled: load_package(p, compiled=c), repeats)
            loads[name, compiled] = us
            line(f"load+validate {name} ({how})", us)
        per_observation = (
            loads["50 observations", compiled] - loads["the example package", compiled]
        ) / (MAX_ENTITIES - 1)
        line(f"  per observation ({how})", per_observation)
    for name in packages:
        line(f"  {name}: marshmallow alone / compiled", loads[name, False] / loads[name, True])

    for name, outcome in OUTCOMES.items():
        job = stored_job(outcome)
        us = per_call(lambda job=job: dump_job(job, URL, REQUEST_ID), repeats)
        line(f"dump {name}", us)

    finished = stored_job(OUTCOMES["processed (11 links)"])
    _, data = dump_job_data(finished)
    meta = Meta(303, URL, REQUEST_ID)
    line("wrap a finished job's kept data", per_call(lambda: dump_envelope(data, meta), repeats))

    body = orjson.dumps(EXAMPLE)
    line("parse the example message (JSON, keys)", per_call(lambda: parse_body(body), repeats))

    invalid = orjson.loads(fifty_errors())["data"]

    def build_422(compiled: bool = True) -> list:
        try:
            load_package(invalid, compiled=compiled)
        except ValidationError as exc:
            entries = invalid_entries(exc.messages)
            JobOutcome.validation_failed(entries)
            return entries
        raise AssertionError("the package was valid")

    assert len(build_422()) == 50
    line("a 422 with 50 errors (load+build)", per_call(build_422, repeats))
    line(
        "a 422 with 50 errors (marshmallow alone)",
        per_call(lambda: build_422(compiled=False), repeats),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 batches of 0.1 s (a few seconds)")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    if args.quick:
        MEASURE_SECONDS = 0.1
    main(args.repeats or (3 if args.quick else 7))

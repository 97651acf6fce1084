"""The OpenAPI document: valid, served, and true to what the running service answers
(schemathesis over it finds no server error and no response that does not conform)."""

from __future__ import annotations

import time
import urllib.request
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from pymongo import MongoClient

from service.domain.jobs import JobOutcome, Link
from service.storage.embedded import free_port
from tests.conftest import TEST_SECRET, bearer, new_job
from tests.harness import start_medevents

ALL_SCOPES = (
    "job:read encounter:write encounter:read condition:read observation:read "
    "allergy_intolerance:read immunization:read risk_assessment:read device:read "
    "medication_statement:read medication_administration:read diagnostic_report:read "
    "procedure:read jobs:admin webhook:write"
)


async def test_the_served_document_is_valid_openapi(api) -> None:
    response = await api.get("/api/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert {"/api/jobs/{job_id}", "/api/patients/{patient_id}/encounter_package"} <= set(
        document["paths"]
    )


FUZZ_CLIENT = "fuzz-client"


def _seed_jobs_of_the_fuzzing_client(settings) -> None:
    """A job of the fuzzing client in each variant, so that its list (`GET /api/jobs`)
    answers with items the document must describe."""
    outcomes = [
        None,
        JobOutcome.processed([Link("encounter", "/api/patients/p/encounters/e")]),
        JobOutcome.validation_failed([]),
        JobOutcome.failed(404, "not_found", "Patient not found"),
        JobOutcome.failed(409, "request_conflict", "Person is not active"),
        JobOutcome.cancelled(),
        JobOutcome.failed_with_error("boom"),
    ]
    client: MongoClient = MongoClient(settings.mongodb_url, tz_aware=True)
    try:
        for outcome in outcomes:
            document = new_job(client_id=FUZZ_CLIENT).to_document(datetime.now(UTC))
            if outcome is not None:
                document.update(outcome.to_update())
            client[settings.mongodb_db]["jobs"].insert_one(document)
    finally:
        client.close()


@pytest.fixture
def running_api(settings, tmp_path):
    """`medevents api` in a process of its own (schemathesis calls it synchronously)."""
    _seed_jobs_of_the_fuzzing_client(settings)
    port = free_port()
    process = start_medevents(
        "api",
        settings,
        tmp_path / "data",
        JWT_SECRET=TEST_SECRET,
        HTTP_PORT=str(port),
        LOG_LEVEL="warning",
        MAX_REQUEST_BYTES="65536",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/health/live", timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "the API did not start"
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(running_api):
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{running_api}/api/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    headers = bearer(client_id=FUZZ_CLIENT, scopes=tuple(ALL_SCOPES.split()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    # Every operation of the document, the client's list and cancel among them.
    covered = {(operation.method.upper(), operation.path) for operation in operations}
    assert {("GET", "/api/jobs"), ("POST", "/api/jobs/{job_id}/actions/cancel")} <= covered
    document = schema.raw_schema
    assert len(covered) == sum(
        method in {"get", "post", "put", "patch", "delete"}
        for item in document["paths"].values()
        for method in item
    )

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=25,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case) -> None:
            case.call_and_validate(base_url=running_api, headers=headers, checks=checks)

        conforms()

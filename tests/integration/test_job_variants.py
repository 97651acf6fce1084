"""Each response variant of `GET /api/jobs/{id}`, from a job written by the real store into
MongoDB, against the published examples: status, meta.code, keys, nesting and value types."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.domain.jobs import JobOutcome, Link, entity_href
from tests.conftest import bearer, new_job

EXAMPLES = Path(__file__).parent / "published_examples"
ISO_UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PATIENT = "3da18c10-d2ca-469e-bde5-7413201cea2f"
PUBLISHED_ENTITY_KINDS = [
    ("encounter", "encounters"),
    ("condition", "conditions"),
    ("observation", "observations"),
    ("allergy_intolerance", "allergy_intolerances"),
    ("immunization", "immunizations"),
    ("risk_assessment", "risk_assessments"),
    ("device", "devices"),
    ("medication_statement", "medication_statements"),
    ("medication_administration", "medication_administrations"),
    ("diagnostic_report", "diagnostic_reports"),
    ("procedure", "procedures"),
]
INVALID = [
    {
        "entry_type": "json_data_property",
        "entry": "$.data.conditions[0].code.coding[0].code",
        "rules": [{"rule": "required", "params": [], "description": "must be present"}],
    },
    {
        "entry_type": "json_data_property",
        "entry": "$.data.encounter.period.start",
        "rules": [{"rule": "format", "params": ["date-time"], "description": "not a date-time"}],
    },
]

OUTCOMES: dict[str, JobOutcome | None] = {
    "pending": None,
    "processed": JobOutcome.processed(
        [
            Link(kind, entity_href(PATIENT, collection, f"id-{kind}"))
            for kind, collection in PUBLISHED_ENTITY_KINDS
        ]
    ),
    "failed_403": JobOutcome.failed(403, "forbidden", "Scope encounter:write is required"),
    "failed_404": JobOutcome.failed(404, "not_found", "Patient not found"),
    "failed_409": JobOutcome.failed(409, "request_conflict", "Person is not active"),
    "failed_422": JobOutcome.validation_failed(INVALID),
    "failed_with_error_500": JobOutcome.failed_with_error("Unexpected error"),
}


def shape(value: Any) -> Any:
    """Keys, nesting and value types, with the values themselves left out."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):  # the published examples show one element of each list at most
        return [shape(value[0])] if value else []
    return type(value).__name__


async def stored_job(store, outcome: JobOutcome | None) -> str:
    job, created = await store.create_pending(new_job())
    assert created
    if outcome is not None:
        assert await store.finish(job["_id"], outcome) is not None
    return job["_id"]


@pytest.mark.parametrize("variant", list(OUTCOMES))
async def test_variant_matches_seed_example(api, store, variant: str) -> None:
    example = json.loads((EXAMPLES / f"{variant}.json").read_text())
    job_id = await stored_job(store, OUTCOMES[variant])

    response = await api.get(f"/api/jobs/{job_id}", headers=bearer(), allow_redirects=False)
    body = await response.json()

    assert response.status == example["meta"]["code"]
    assert body["meta"]["code"] == response.status
    assert shape(body) == shape(example)
    assert body["data"]["status"] == example["data"]["status"]
    assert body["data"].get("status_code") == example["data"].get("status_code")
    assert ISO_UTC_MILLIS.fullmatch(body["data"]["eta"])
    assert body["meta"]["type"] == "object"
    assert body["meta"]["url"] == str(api.make_url(f"/api/jobs/{job_id}"))
    assert body["meta"]["request_id"] == response.headers["x-request-id"]
    assert "Location" not in response.headers


async def test_pending_links_to_the_job_itself(api, store) -> None:
    job_id = await stored_job(store, None)
    body = await (await api.get(f"/api/jobs/{job_id}", headers=bearer())).json()
    assert body["data"]["links"] == [{"entity": "job", "href": f"/api/jobs/{job_id}"}]


async def test_processed_links_every_created_entity(api, store) -> None:
    job_id = await stored_job(store, OUTCOMES["processed"])
    response = await api.get(f"/api/jobs/{job_id}", headers=bearer(), allow_redirects=False)
    assert response.status == 303
    links = (await response.json())["data"]["links"]
    assert [link["entity"] for link in links] == [kind for kind, _ in PUBLISHED_ENTITY_KINDS]
    assert links[0]["href"] == f"/api/patients/{PATIENT}/encounters/id-encounter"


@pytest.mark.parametrize(
    ("variant", "error"),
    [
        ("failed_403", "Scope encounter:write is required"),
        ("failed_404", "Patient not found"),
        ("failed_409", {"message": "Person is not active", "type": "request_conflict"}),
        ("failed_with_error_500", {"message": "Unexpected error", "type": "internal_error"}),
    ],
)
async def test_failed_error_renders_per_status_code(api, store, variant, error) -> None:
    job_id = await stored_job(store, OUTCOMES[variant])
    body = await (await api.get(f"/api/jobs/{job_id}", headers=bearer())).json()
    assert body["data"]["error"] == error


async def test_validation_failure_keeps_every_nested_entry(api, store) -> None:
    job_id = await stored_job(store, OUTCOMES["failed_422"])
    error = (await (await api.get(f"/api/jobs/{job_id}", headers=bearer())).json())["data"]["error"]
    assert error["type"] == "validation_failed"
    assert error["message"].startswith("Validation failed.")
    assert error["invalid"] == INVALID


async def test_trimmed_validation_failure_says_how_many_entries_there_were(api, store) -> None:
    many = [{**INVALID[0], "entry": f"$.data.observations[{i}].code"} for i in range(500)]
    job_id = await stored_job(store, JobOutcome.validation_failed(many))
    response = await api.get(f"/api/jobs/{job_id}", headers=bearer())
    error = (await response.json())["data"]["error"]
    assert 0 < len(error["invalid"]) < 500
    assert error["invalid_total"] == 500
    assert error["invalid"][0]["entry"] == "$.data.observations[0].code"

"""How the parts are put together: the poll's projection follows the response schemas, the
routes and OpenAPI operations of submissions follow the job types, the bootstrap closes what
it opened in the reverse order, and one scope check serves HTTP and AMQP alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiohttp import web
from marshmallow import Schema, fields

from consumers.processors import builtin_registry
from schemas.jobs import JOB_RESPONSE_FIELDS, dump_job_data, fields_read_by
from service.api.openapi import build_openapi
from service.api.routes import setup_routes
from service.bootstrap import Services
from service.config import ConfigError, Settings
from service.domain.jobs import JobOutcome, JobStatus, Link, NewJob, cap_error
from service.domain.principal import Principal, ScopeDenied
from service.signatures import Base64JsonDecoder, CmsSignatureVerifier, encode_unsigned
from service.usecases.job_types import HttpSubmission, JobType, JobTypeRegistry
from tests.note_job_type import NOTE, NoteSchema, write_note
from tests.signing import TestCA

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def stored_job(outcome: JobOutcome | None) -> dict:
    """A job document as MongoDB holds it, every field included."""
    job = NewJob(
        job_id="job-1",
        type="encounter_package.create",
        hash="h",
        client_id="mis-1",
        user_id="user-1",
        request_id="req-1",
        eta=NOW,
        patient_id="5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f",
    ).to_document(NOW)
    if outcome is not None:
        job.update(outcome.to_update(), attempts=1)
    return job


OUTCOMES = {
    "pending": None,
    "processed": JobOutcome.processed([Link("encounter", "/api/patients/p/encounters/e")]),
    "failed_404": JobOutcome.failed(404, "not_found", "Patient not found"),
    "failed_409": JobOutcome.failed(409, "request_conflict", "Person is not active"),
    "failed_422": JobOutcome.validation_failed(
        [{"entry_type": "json_data_property", "entry": "$.x", "rules": []}]
    ),
    "failed_422_capped": JobOutcome(
        JobStatus.FAILED,
        422,
        error=cap_error(
            {
                "type": "validation_failed",
                "message": "m",
                "invalid": [{"entry": f"$.x[{i}]", "rules": []} for i in range(2_000)],
            }
        ),
    ),
    "failed_with_error": JobOutcome.failed_with_error("boom"),
}


@pytest.mark.parametrize("outcome", OUTCOMES.values(), ids=OUTCOMES.keys())
def test_a_poll_reads_every_field_its_response_renders(outcome) -> None:
    """The poll's projection (`JOB_RESPONSE_FIELDS`, what `JobStore.get_for_client` reads) is
    derived from the response schemas: each variant renders the projected job exactly as the
    whole document."""
    whole = stored_job(outcome)
    projected = {key: value for key, value in whole.items() if key in JOB_RESPONSE_FIELDS}
    assert dump_job_data(projected) == dump_job_data(whole)
    assert {"hash", "client_id", "request_id", "inserted_at"}.isdisjoint(JOB_RESPONSE_FIELDS)


def test_a_field_whose_reads_cannot_be_listed_is_refused() -> None:
    class Opaque(Schema):
        status = fields.Integer()
        links = fields.Method("make_links")

        def make_links(self, job: dict) -> list:
            return [job["hidden"]]

    with pytest.raises(TypeError, match=r"Opaque\.links"):
        fields_read_by(Opaque())


def test_a_job_type_brings_its_route_and_its_openapi_operation() -> None:
    registry = builtin_registry().with_types(NOTE)
    app = web.Application()
    setup_routes(app, registry)
    routes = {
        (route.method, route.resource.canonical): route.handler
        for route in app.router.routes()
        if route.resource is not None
    }
    handler = routes[("POST", "/api/patients/{patient_id}/notes")]
    assert handler._medevents_required_scope == "note:write"  # the scope stated once

    document = build_openapi(registry)
    operation = document["paths"]["/api/patients/{patient_id}/notes"]["post"]
    assert operation["summary"] == "Write a note (scope note:write)"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Note"}
    assert document["components"]["schemas"]["Note"]["required"] == ["text"]
    assert "/api/patients/{patient_id}/notes" not in build_openapi(builtin_registry())["paths"]


def test_a_job_type_without_http_is_not_routed() -> None:
    quiet = JobType("note.archive", NoteSchema(), write_note, "note:write")
    app = web.Application()
    setup_routes(app, JobTypeRegistry([quiet]))
    assert not [r for r in app.router.resources() if "note" in r.canonical]


def test_two_job_types_cannot_claim_one_route() -> None:
    twin = JobType(
        "note.replace",
        NoteSchema(),
        write_note,
        "note:write",
        http=HttpSubmission("post", "/api/patients/{patient_id}/notes", "Replace a note"),
    )
    with pytest.raises(ValueError, match="declared by two job types"):
        JobTypeRegistry([NOTE, twin])


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/patients/{patient_id}/notes"), ("POST", "/api/notes")],
)
def test_a_submission_is_a_write_under_its_patient(method: str, path: str) -> None:
    with pytest.raises(ValueError, match="submission"):
        HttpSubmission(method, path, "Write a note")


async def test_a_failing_closer_does_not_keep_the_others_from_closing() -> None:
    services = Services(Settings(jwt_secret="x" * 40), builtin_registry())
    closed: list[str] = []

    async def close_store() -> None:
        closed.append("store")

    async def fail() -> None:
        raise RuntimeError("index task failed")

    services.on_close(close_store)
    services.on_close(fail)
    with pytest.raises(RuntimeError, match="index task failed"):
        await services.aclose()
    assert closed == ["store"]
    with pytest.raises(RuntimeError, match="closed"):
        services.on_close(close_store)  # nothing is built after the close


async def test_services_build_nothing_until_asked_and_close_in_reverse_order() -> None:
    services = Services(Settings(jwt_secret="x" * 40), builtin_registry())
    closed: list[str] = []

    def closer(name: str):
        async def close() -> None:
            closed.append(name)

        return close

    services.on_close(closer("store"))
    services.on_close(closer("consumer"))
    await services.aclose()
    await services.aclose()  # a second entrypoint of the process closing too
    assert closed == ["consumer", "store"]

    with pytest.raises(RuntimeError, match="mongodb_url is unset"):
        _ = services.jobs  # the embedded server is the CLI's to start


async def test_signed_data_is_read_as_signature_mode_says(tmp_path) -> None:
    """The bootstrap builds the signatures adapter of SIGNATURE_MODE: `decode` only decodes,
    `cms` verifies against SIGNATURE_CA_FILE and cannot be built without it."""
    base = Settings(jwt_secret="x" * 40)
    decoding = Services(base.with_changes(signature_mode="decode"), builtin_registry())
    assert isinstance(decoding.signatures, Base64JsonDecoder)
    signed = decoding.signatures.decode(encode_unsigned({"encounter": {"id": "e"}}))
    assert (signed.content, signed.signer) == ({"encounter": {"id": "e"}}, None)

    with pytest.raises(ConfigError, match="SIGNATURE_MODE=cms needs SIGNATURE_CA_FILE"):
        _ = Services(base, builtin_registry()).signatures

    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(TestCA().pem)
    verifying = Services(base.with_changes(signature_ca_file=ca_file), builtin_registry())
    assert isinstance(verifying.signatures, CmsSignatureVerifier)
    for services in (decoding, verifying):
        await services.aclose()


def test_the_scope_check_names_what_is_missing() -> None:
    principal = Principal.from_scope_text("user-1", "mis-1", "job:read  encounter:write")
    principal.require("job:read", "encounter:write")
    with pytest.raises(ScopeDenied) as denied:
        principal.require("job:read", "episode:write")
    assert str(denied.value) == (
        "Your scope does not allow to access this resource. Missing allowances: episode:write"
    )

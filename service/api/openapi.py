"""OpenAPI 3 generated from the marshmallow schemas (apispec), served at `/api/openapi.json`.

Every response body is named by the schema that dumps it, so the document cannot drift from
what the server sends: the suite checks it with openapi-spec-validator and runs schemathesis
over the running service against it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from schemas import admin as admin_schemas
from schemas import job_queries as job_query_schemas
from schemas import jobs as job_schemas
from schemas import webhooks as hooks
from schemas.entities import ENTITY_ENVELOPES, envelope_name
from schemas.entity_queries import (
    EPISODE_LIST_QUERIES,
    LIST_QUERIES,
    PAGE_ENVELOPES,
    page_envelope_name,
)
from schemas.envelope import ERROR_ENVELOPE, UtcDateTime
from schemas.health import HEALTH
from service import __version__
from service.api.views.jobs import MAX_WAIT_SECONDS
from service.domain.entities import ALL_ENTITY_KINDS, READABLE_KINDS, EntityKind
from service.usecases.job_types import JobType, JobTypeRegistry

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    described = {
        400: "The request itself is unusable",
        401: "No token, or not a valid one",
        403: "The token's scope does not allow this",
        404: "Nothing of that id for this client (a submission: no such patient)",
        405: "Not a method of this resource",
        408: "The body stalled for HTTP_BODY_TIMEOUT_SECONDS, or arrived slower than 16 KiB/s",
        409: "A submission for a patient who is not active",
        413: "The body is over MAX_REQUEST_BYTES",
        422: "The body is not a JSON object, or not of the request's schema",
        500: "An error of the server (no details)",
        503: "MongoDB or RabbitMQ unreachable; see Retry-After",
    }
    return {str(s): _json(_ref("ErrorEnvelope"), described[s]) for s in statuses}


def _operation(
    spec: APISpec,
    path: str,
    method: str,
    summary: str,
    *,
    responses: dict[str, Any],
    errors: tuple[int, ...] = (),
    then: dict[str, Any] | None = None,
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool | None = None,
    secured: bool = True,
) -> None:
    """Declare one operation of `path`: its summary, its description, the bearer token
    (unless not `secured`), its parameters, its request body (the schema `body` names), and
    its `responses`, then the error envelope's for `errors`, then `then`."""
    operation: dict[str, Any] = {"summary": summary}
    if description is not None:
        operation["description"] = description
    if secured:
        operation["security"] = [{"bearer": []}]
    if parameters is not None:
        operation["parameters"] = parameters
    if body is not None:
        content = {JSON: {"schema": _ref(body)}}
        operation["requestBody"] = (
            {"content": content}
            if body_required is None
            else {"required": body_required, "content": content}
        )
    operation["responses"] = {**responses, **_errors(*errors), **(then or {})}
    spec.path(path=path, operations={method: operation})


def body_name(job_type: JobType) -> str:
    """The name of a submission's body in the document: its schema's (`EncounterPackage`)."""
    return type(job_type.schema).__name__.removesuffix("Schema")


def _other_path_parameters(path: str) -> list[dict[str, Any]]:
    """The UUIDs a submission's path names besides the patient (`{episode_id}`)."""
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
        for name in re.findall(r"\{(\w+)\}", path)
        if name != "patient_id"
    ]


def _signed_content_description(job_type: JobType) -> str:
    checked = (
        "Checked at once: the patient (404 if unknown, 409 if not active) and the request's"
        " schema (422). The rest is checked by the consumer: poll the job."
    )
    if job_type.signed_content is None:
        return checked
    content = type(job_type.signed_content).__name__.removesuffix("Schema")
    return (
        f"`signed_data` is base64 of a CMS SignedData (DER) whose content is a `{content}`"
        " (SIGNATURE_MODE=cms), or base64 of that JSON (SIGNATURE_MODE=decode, development). "
        + checked
    )


def build_openapi(registry: JobTypeRegistry) -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="medevents: asynchronous jobs for medical-event submissions",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Submissions are processed asynchronously; poll the job."},
    )
    plugin.map_to_openapi_type(job_schemas.StatusCode, fields.String)
    plugin.map_to_openapi_type(job_schemas.StatusLabel, fields.String)
    plugin.map_to_openapi_type(UtcDateTime, fields.DateTime)
    plugin.map_to_openapi_type(admin_schemas.Cursor, fields.String)
    spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    envelopes = {
        "PendingJobEnvelope": job_schemas.PENDING,
        "ProcessedJobEnvelope": job_schemas.PROCESSED,
        "FailedWithMessageJobEnvelope": job_schemas.FAILED_WITH_MESSAGE,
        "FailedWithTypedErrorJobEnvelope": job_schemas.FAILED_WITH_TYPED_ERROR,
        "FailedValidationJobEnvelope": job_schemas.FAILED_VALIDATION,
        "ErrorEnvelope": ERROR_ENVELOPE,
        "HealthEnvelope": HEALTH,
    }
    for job_type in registry.submitted_over_http:
        for schema in (job_type.schema, job_type.signed_content):
            if schema is None:
                continue
            name = type(schema).__name__.removesuffix("Schema")
            known = envelopes.setdefault(name, schema)
            if type(known) is not type(schema):  # two schemas, one name
                raise ValueError(f"{name} names two schemas of request bodies")
    for kind in READABLE_KINDS:
        envelopes[envelope_name(kind)] = ENTITY_ENVELOPES[kind.collection]
        envelopes[page_envelope_name(kind)] = PAGE_ENVELOPES[kind.collection]
    for name, schema in envelopes.items():
        spec.components.schema(name, schema=schema)

    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    }
    patient_id = {
        "name": "patient_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A patient's UUID",
    }
    retry_after = {"Retry-After": {"schema": {"type": "integer", "minimum": 1, "maximum": 30}}}
    etag = {"ETag": {"schema": {"type": "string"}}}
    _operation(
        spec,
        "/api/jobs/{job_id}",
        "get",
        "The processing status of an async job (scope job:read)",
        parameters=[
            job_id,
            {
                "name": "wait",
                "in": "query",
                "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                "description": "Long poll: answer when the job leaves pending, or"
                " after this many seconds",
            },
            {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
        ],
        responses={
            "200": {
                "description": "Pending, failed or failed_with_error",
                "headers": {**etag, **retry_after},
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [
                                _ref("PendingJobEnvelope"),
                                _ref("FailedWithMessageJobEnvelope"),
                                _ref("FailedWithTypedErrorJobEnvelope"),
                                _ref("FailedValidationJobEnvelope"),
                            ]
                        }
                    }
                },
            },
            "303": {
                "description": "Processed: links to what was created (no Location)",
                "headers": etag,
                "content": {JSON: {"schema": _ref("ProcessedJobEnvelope")}},
            },
            "304": {"description": "Unchanged since the ETag given", "headers": etag},
        },
        errors=(401, 403, 404, 503, 500),
    )
    for job_type in registry.submitted_over_http:
        assert job_type.http is not None
        _operation(
            spec,
            job_type.http.path,
            job_type.http.method.lower(),
            f"{job_type.http.summary} (scope {job_type.required_scope})",
            description=_signed_content_description(job_type),
            parameters=[patient_id, *_other_path_parameters(job_type.http.path)],
            body=body_name(job_type),
            body_required=True,
            responses={
                "202": {
                    "description": "Accepted: the pending job",
                    "headers": {"Location": {"schema": {"type": "string"}}, **retry_after},
                    "content": {JSON: {"schema": _ref("PendingJobEnvelope")}},
                },
            },
            errors=(401, 403, 404, 408, 409, 413, 422, 503, 500),
        )
    _operation(
        spec,
        "/api/patients/{patient_id}/{collection}/{entity_id}",
        "get",
        "An entity a processed job created (scope <entity>:read)",
        parameters=[
            patient_id,
            {
                "name": "collection",
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "enum": [kind.collection for kind in READABLE_KINDS],
                },
            },
            {
                "name": "entity_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            },
            {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
        ],
        responses={
            "200": {
                "description": "The entity",
                "headers": etag,
                "content": {
                    JSON: {
                        "schema": {"oneOf": [_ref(envelope_name(kind)) for kind in READABLE_KINDS]}
                    }
                },
            },
            "304": {"description": "Unchanged since the ETag given", "headers": etag},
        },
        errors=(401, 403, 404, 503, 500),
    )
    _entity_list_paths(spec, patient_id, etag)
    for path, summary in (
        ("/health/live", "The process serves requests"),
        ("/health/ready", "MongoDB and the broker answer"),
    ):
        _operation(
            spec,
            path,
            "get",
            summary,
            secured=False,
            responses={
                "200": _json(_ref("HealthEnvelope"), "Ready"),
                "503": _json(_ref("HealthEnvelope"), "Not ready"),
            },
        )
    _admin_paths(spec, job_id)
    _client_job_paths(spec, plugin, job_id, registry)
    _webhook_paths(spec)
    return spec.to_dict()


def _entity_list_paths(spec: APISpec, patient_id: dict[str, Any], etag: dict[str, Any]) -> None:
    """A patient's lists, one path per kind with its filters, and the reads in an episode's
    context (scope `<entity>:read` of the kind)."""
    episode_id = {
        "name": "episode_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The UUID of one of the patient's episodes",
    }
    if_none_match = {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}
    not_modified = {"description": "Unchanged since the ETag given", "headers": etag}
    bad_query = _json(
        _ref("ErrorEnvelope"), "A query parameter unknown or malformed (`invalid` says which)"
    )

    def page_of(path: str, kind: EntityKind, query: Any, context: list[dict[str, Any]]) -> None:
        _operation(
            spec,
            path,
            "get",
            f"The patient's {kind.collection.replace('_', ' ')}, newest first,"
            f" a page at a time (scope {kind.entity}:read)",
            parameters=[patient_id, *context, {"in": "query", "schema": query}, if_none_match],
            responses={
                "200": {
                    "description": "A page",
                    "headers": etag,
                    "content": {JSON: {"schema": _ref(page_envelope_name(kind))}},
                },
                "304": not_modified,
            },
            errors=(401, 403, 404, 503, 500),
            then={"422": bad_query},
        )

    for kind in READABLE_KINDS:
        page_of(
            f"/api/patients/{{patient_id}}/{kind.collection}",
            kind,
            LIST_QUERIES[kind.collection],
            [],
        )
    for kind in ALL_ENTITY_KINDS:
        page_of(
            f"/api/patients/{{patient_id}}/episodes/{{episode_id}}/{kind.collection}",
            kind,
            EPISODE_LIST_QUERIES[kind.collection],
            [episode_id],
        )
    _operation(
        spec,
        "/api/patients/{patient_id}/episodes/{episode_id}/{collection}/{entity_id}",
        "get",
        "An entity recorded in one of the patient's episodes (scope <entity>:read)",
        parameters=[
            patient_id,
            episode_id,
            {
                "name": "collection",
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "enum": [kind.collection for kind in ALL_ENTITY_KINDS],
                },
            },
            {
                "name": "entity_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            },
            if_none_match,
        ],
        responses={
            "200": {
                "description": "The entity",
                "headers": etag,
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [_ref(envelope_name(kind)) for kind in ALL_ENTITY_KINDS]
                        }
                    }
                },
            },
            "304": not_modified,
        },
        errors=(401, 403, 404, 503, 500),
    )


def _client_job_paths(
    spec: APISpec,
    plugin: MarshmallowPlugin,
    job_id: dict[str, Any],
    registry: JobTypeRegistry,
) -> None:
    """A client's own jobs (`GET /api/jobs`, scope job:read) and the cancel of a pending one
    (`POST /api/jobs/{job_id}/actions/cancel`). An item of the list is one of the variants'
    `data` with the job's `id` and `type` first: `JobListItem<Variant>`, one per variant."""
    converter = plugin.converter
    assert converter is not None  # set once the plugin is registered with the spec
    items = []
    for variant, (_, _, data_schema) in job_schemas.VARIANTS.items():
        rendered = converter.schema2jsonschema(data_schema)
        name = "JobListItem" + "".join(part.capitalize() for part in variant.split("_"))
        item = {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "The job's id"},
                "type": {"type": "string", "description": "The job's type"},
                **rendered.get("properties", {}),
            },
            "required": ["id", "type", *rendered.get("required", [])],
            "additionalProperties": False,
        }
        spec.components.schema(name, component=item)
        items.append(_ref(name))

    def job_list_item(converter: Any, field: Any, **_: Any) -> dict[str, Any]:
        # Several variants may fit one item (a processed job fits the pending one): anyOf.
        return {"anyOf": items} if isinstance(field, job_query_schemas.JobListItem) else {}

    converter.add_attribute_function(job_list_item)
    spec.components.schema("JobListPage", schema=job_query_schemas.JOB_LIST_PAGE)
    spec.components.schema("CancelRequest", schema=job_query_schemas.CANCEL_REQUEST)
    query = job_query_schemas.job_list_query_schema(tuple(registry.names))
    _operation(
        spec,
        "/api/jobs",
        "get",
        "The caller's own jobs, newest first, a page at a time (scope job:read)",
        description="Each item as GET /api/jobs/{job_id} renders its `data`, after its `id`"
        " and `type`. `paging.next_page_token` (null on the last page) is given back as"
        " `page_token` with the same filters for the next page.",
        parameters=[{"in": "query", "schema": query}],
        responses={"200": _json(_ref("JobListPage"), "A page of the caller's jobs")},
        errors=(401, 403, 503, 500),
        then={
            "422": _json(
                _ref("ErrorEnvelope"),
                "A query parameter unknown, malformed, given twice, or a page token"
                " not of this list (`invalid` says which)",
            ),
        },
    )
    _operation(
        spec,
        "/api/jobs/{job_id}/actions/cancel",
        "post",
        "Cancel the caller's pending job: it ends failed, status_code 499"
        " (scope job:read and the scope submitting its type needs)",
        parameters=[job_id],
        body="CancelRequest",
        body_required=False,
        responses={
            "200": _json(
                _ref("FailedWithTypedErrorJobEnvelope"),
                "Cancelled: the job as GET /api/jobs/{job_id} renders it now",
            ),
        },
        errors=(401, 403, 404, 408, 413, 503, 500),
        then={
            "409": _json(_ref("ErrorEnvelope"), "The job has already finished"),
            "422": _json(_ref("ErrorEnvelope"), "A body that is not `{}`"),
        },
    )


def _admin_paths(spec: APISpec, job_id: dict[str, Any]) -> None:
    """The operators' endpoints (scope jobs:admin)."""
    for name, schema in {
        "AdminJobPage": admin_schemas.ADMIN_JOB_PAGE,
        "AdminJobEnvelope": admin_schemas.ADMIN_JOB,
        "StatsEnvelope": admin_schemas.STATS,
        "ReplayedEnvelope": admin_schemas.REPLAYED,
        "ReplayRequest": admin_schemas.REPLAY_REQUEST,
    }.items():
        spec.components.schema(name, schema=schema)
    _operation(
        spec,
        "/api/admin/jobs",
        "get",
        "Jobs of every client, newest first, a page at a time (jobs:admin)",
        parameters=[{"in": "query", "schema": admin_schemas.AdminJobsQuerySchema}],
        responses={"200": _json(_ref("AdminJobPage"), "A page of jobs")},
        errors=(401, 403, 422, 503, 500),
    )
    _operation(
        spec,
        "/api/admin/jobs/{job_id}",
        "get",
        "Any client's job (jobs:admin)",
        parameters=[job_id],
        responses={"200": _json(_ref("AdminJobEnvelope"), "The job")},
        errors=(401, 403, 404, 503, 500),
    )
    _operation(
        spec,
        "/api/admin/stats",
        "get",
        "Pending jobs, finished jobs by outcome, processing time, queues (jobs:admin)",
        responses={"200": _json(_ref("StatsEnvelope"), "The counts")},
        errors=(401, 403, 503, 500),
    )
    _operation(
        spec,
        "/api/admin/dead-letters/replay",
        "post",
        "Move dead-lettered messages back to the work queue: all, by job id,"
        " or the oldest N (jobs:admin)",
        body="ReplayRequest",
        responses={"200": _json(_ref("ReplayedEnvelope"), "How many were replayed")},
        errors=(401, 403, 422, 503, 500),
    )


def _webhook_paths(spec: APISpec) -> None:
    """A client's webhook endpoints (scope webhook:write) and the operators' webhook dead
    letters (jobs:admin); docs/webhooks.md."""
    for name, schema in {
        "CreateWebhook": hooks.CREATE_WEBHOOK,
        "WebhookEndpointEnvelope": hooks.WEBHOOK_ENDPOINT,
        "WebhookEndpointWithSecretEnvelope": hooks.WEBHOOK_ENDPOINT_WITH_SECRET,
        "WebhookList": hooks.WEBHOOK_LIST,
        "WebhookDeliveriesPage": hooks.DELIVERIES_PAGE,
        "WebhookDeadLettersEnvelope": hooks.WEBHOOK_DEAD_LETTERS,
        "WebhookReplayedEnvelope": hooks.WEBHOOK_REPLAYED,
        "WebhookReplayRequest": hooks.WEBHOOK_REPLAY_REQUEST,
    }.items():
        spec.components.schema(name, schema=schema)
    endpoint_id = {
        "name": "endpoint_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The endpoint's UUID",
    }
    scope = " (scope webhook:write)"
    _operation(
        spec,
        "/api/webhooks",
        "post",
        "Register a webhook endpoint" + scope,
        description="https only, a public address (unless WEBHOOK_ALLOW_INSECURE);"
        " events job.processed, job.failed. A URL refused answers 422 on $.url.",
        body="CreateWebhook",
        body_required=True,
        responses={
            "201": {
                "description": "Created: the endpoint and its secret (shown only here)",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {JSON: {"schema": _ref("WebhookEndpointWithSecretEnvelope")}},
            },
        },
        errors=(401, 403, 408, 409, 413, 422, 503, 500),
    )
    _operation(
        spec,
        "/api/webhooks",
        "get",
        "The caller's webhook endpoints, without their secrets" + scope,
        responses={"200": _json(_ref("WebhookList"), "The endpoints")},
        errors=(401, 403, 503, 500),
    )
    _operation(
        spec,
        "/api/webhooks/{endpoint_id}",
        "get",
        "One of the caller's webhook endpoints" + scope,
        parameters=[endpoint_id],
        responses={"200": _json(_ref("WebhookEndpointEnvelope"), "The endpoint")},
        errors=(401, 403, 404, 503, 500),
    )
    _operation(
        spec,
        "/api/webhooks/{endpoint_id}",
        "delete",
        "Delete one of the caller's webhook endpoints" + scope,
        parameters=[endpoint_id],
        responses={"204": {"description": "Deleted"}},
        errors=(401, 403, 404, 503, 500),
    )
    _operation(
        spec,
        "/api/webhooks/{endpoint_id}/actions/rotate-secret",
        "post",
        "A new signing secret, shown once; the previous one signs beside it"
        " for WEBHOOK_SECRET_OVERLAP_SECONDS" + scope,
        parameters=[endpoint_id],
        responses={"200": _json(_ref("WebhookEndpointWithSecretEnvelope"), "The new secret")},
        errors=(401, 403, 404, 503, 500),
    )
    _operation(
        spec,
        "/api/webhooks/{endpoint_id}/deliveries",
        "get",
        "The endpoint's delivery attempts, newest first, a page at a time" + scope,
        parameters=[endpoint_id, {"in": "query", "schema": hooks.DeliveriesQuerySchema}],
        responses={"200": _json(_ref("WebhookDeliveriesPage"), "A page of attempts")},
        errors=(401, 403, 404, 422, 503, 500),
    )
    _operation(
        spec,
        "/api/admin/webhooks/dead-letters",
        "get",
        "How many webhooks wait in their dead-letter queue (jobs:admin)",
        responses={"200": _json(_ref("WebhookDeadLettersEnvelope"), "The count")},
        errors=(401, 403, 500),
    )
    _operation(
        spec,
        "/api/admin/webhooks/dead-letters/replay",
        "post",
        "Deliver the webhooks' dead letters again, from the schedule's start: all, or the"
        " oldest N (jobs:admin)",
        body="WebhookReplayRequest",
        responses={"200": _json(_ref("WebhookReplayedEnvelope"), "How many were replayed")},
        errors=(401, 403, 422, 503, 500),
    )


def openapi_document(registry: JobTypeRegistry) -> bytes:
    return orjson.dumps(build_openapi(registry))

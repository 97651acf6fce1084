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
        version="1",
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

    secured = [{"bearer": []}]
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
    spec.path(
        path="/api/jobs/{job_id}",
        operations={
            "get": {
                "summary": "The processing status of an async job (scope job:read)",
                "security": secured,
                "parameters": [
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
                "responses": {
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
                    **_errors(401, 403, 404, 503, 500),
                },
            }
        },
    )
    for job_type in registry.submitted_over_http:
        assert job_type.http is not None
        spec.path(
            path=job_type.http.path,
            operations={
                job_type.http.method.lower(): {
                    "summary": f"{job_type.http.summary} (scope {job_type.required_scope})",
                    "description": _signed_content_description(job_type),
                    "security": secured,
                    "parameters": [patient_id, *_other_path_parameters(job_type.http.path)],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _ref(body_name(job_type))}},
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted: the pending job",
                            "headers": {
                                "Location": {"schema": {"type": "string"}},
                                **retry_after,
                            },
                            "content": {JSON: {"schema": _ref("PendingJobEnvelope")}},
                        },
                        **_errors(401, 403, 404, 408, 409, 413, 422, 503, 500),
                    },
                }
            },
        )
    spec.path(
        path="/api/patients/{patient_id}/{collection}/{entity_id}",
        operations={
            "get": {
                "summary": "An entity a processed job created (scope <entity>:read)",
                "security": secured,
                "parameters": [
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
                "responses": {
                    "200": {
                        "description": "The entity",
                        "headers": etag,
                        "content": {
                            JSON: {
                                "schema": {
                                    "oneOf": [_ref(envelope_name(kind)) for kind in READABLE_KINDS]
                                }
                            }
                        },
                    },
                    "304": {"description": "Unchanged since the ETag given", "headers": etag},
                    **_errors(401, 403, 404, 503, 500),
                },
            }
        },
    )
    _entity_list_paths(spec, secured, patient_id, etag)
    for path, summary in (
        ("/health/live", "The process serves requests"),
        ("/health/ready", "MongoDB and the broker answer"),
    ):
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "responses": {
                        "200": _json(_ref("HealthEnvelope"), "Ready"),
                        "503": _json(_ref("HealthEnvelope"), "Not ready"),
                    },
                }
            },
        )
    _admin_paths(spec, secured, job_id)
    _client_job_paths(spec, plugin, secured, job_id, registry)
    _webhook_paths(spec, secured)
    return spec.to_dict()


def _entity_list_paths(
    spec: APISpec, secured: list[dict], patient_id: dict[str, Any], etag: dict[str, Any]
) -> None:
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

    def page_of(kind: EntityKind, query: Any, context: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "get": {
                "summary": f"The patient's {kind.collection.replace('_', ' ')}, newest first,"
                f" a page at a time (scope {kind.entity}:read)",
                "security": secured,
                "parameters": [
                    patient_id,
                    *context,
                    {"in": "query", "schema": query},
                    if_none_match,
                ],
                "responses": {
                    "200": {
                        "description": "A page",
                        "headers": etag,
                        "content": {JSON: {"schema": _ref(page_envelope_name(kind))}},
                    },
                    "304": not_modified,
                    **_errors(401, 403, 404, 503, 500),
                    "422": bad_query,
                },
            }
        }

    for kind in READABLE_KINDS:
        spec.path(
            path=f"/api/patients/{{patient_id}}/{kind.collection}",
            operations=page_of(kind, LIST_QUERIES[kind.collection], []),
        )
    for kind in ALL_ENTITY_KINDS:
        spec.path(
            path=f"/api/patients/{{patient_id}}/episodes/{{episode_id}}/{kind.collection}",
            operations=page_of(kind, EPISODE_LIST_QUERIES[kind.collection], [episode_id]),
        )
    spec.path(
        path="/api/patients/{patient_id}/episodes/{episode_id}/{collection}/{entity_id}",
        operations={
            "get": {
                "summary": "An entity recorded in one of the patient's episodes"
                " (scope <entity>:read)",
                "security": secured,
                "parameters": [
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
                "responses": {
                    "200": {
                        "description": "The entity",
                        "headers": etag,
                        "content": {
                            JSON: {
                                "schema": {
                                    "oneOf": [
                                        _ref(envelope_name(kind)) for kind in ALL_ENTITY_KINDS
                                    ]
                                }
                            }
                        },
                    },
                    "304": not_modified,
                    **_errors(401, 403, 404, 503, 500),
                },
            }
        },
    )


def _client_job_paths(
    spec: APISpec,
    plugin: MarshmallowPlugin,
    secured: list[dict],
    job_id: dict[str, Any],
    registry: JobTypeRegistry,
) -> None:
    """A client's own jobs (`GET /api/jobs`, scope job:read) and the cancel of a pending one
    (`POST /api/jobs/{job_id}/actions/cancel`). An item of the list is one of the variants'
    `data` with the job's `id` and `type` first: `JobListItem<Variant>`, one per variant."""
    items = []
    for variant, (_, _, data_schema) in job_schemas.VARIANTS.items():
        rendered = plugin.converter.schema2jsonschema(data_schema)
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

    plugin.converter.add_attribute_function(job_list_item)
    spec.components.schema("JobListPage", schema=job_query_schemas.JOB_LIST_PAGE)
    spec.components.schema("CancelRequest", schema=job_query_schemas.CANCEL_REQUEST)
    query = job_query_schemas.job_list_query_schema(tuple(registry.names))
    spec.path(
        path="/api/jobs",
        operations={
            "get": {
                "summary": "The caller's own jobs, newest first, a page at a time (scope job:read)",
                "description": "Each item as GET /api/jobs/{job_id} renders its `data`, after"
                " its `id` and `type`. `paging.next_page_token` (null on the last page) is"
                " given back as `page_token` with the same filters for the next page.",
                "security": secured,
                "parameters": [{"in": "query", "schema": query}],
                "responses": {
                    "200": _json(_ref("JobListPage"), "A page of the caller's jobs"),
                    **_errors(401, 403, 503, 500),
                    "422": _json(
                        _ref("ErrorEnvelope"),
                        "A query parameter unknown, malformed, given twice, or a page token"
                        " not of this list (`invalid` says which)",
                    ),
                },
            }
        },
    )
    spec.path(
        path="/api/jobs/{job_id}/actions/cancel",
        operations={
            "post": {
                "summary": "Cancel the caller's pending job: it ends failed, status_code 499"
                " (scope job:read and the scope submitting its type needs)",
                "security": secured,
                "parameters": [job_id],
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": _ref("CancelRequest")}},
                },
                "responses": {
                    "200": _json(
                        _ref("FailedWithTypedErrorJobEnvelope"),
                        "Cancelled: the job as GET /api/jobs/{job_id} renders it now",
                    ),
                    **_errors(401, 403, 404, 408, 413, 503, 500),
                    "409": _json(_ref("ErrorEnvelope"), "The job has already finished"),
                    "422": _json(_ref("ErrorEnvelope"), "A body that is not `{}`"),
                },
            }
        },
    )


def _admin_paths(spec: APISpec, secured: list[dict], job_id: dict[str, Any]) -> None:
    """The operators' endpoints (scope jobs:admin)."""
    for name, schema in {
        "AdminJobPage": admin_schemas.ADMIN_JOB_PAGE,
        "AdminJobEnvelope": admin_schemas.ADMIN_JOB,
        "StatsEnvelope": admin_schemas.STATS,
        "ReplayedEnvelope": admin_schemas.REPLAYED,
        "ReplayRequest": admin_schemas.REPLAY_REQUEST,
    }.items():
        spec.components.schema(name, schema=schema)
    errors = _errors(401, 403, 422, 503, 500)
    spec.path(
        path="/api/admin/jobs",
        operations={
            "get": {
                "summary": "Jobs of every client, newest first, a page at a time (jobs:admin)",
                "security": secured,
                "parameters": [{"in": "query", "schema": admin_schemas.AdminJobsQuerySchema}],
                "responses": {"200": _json(_ref("AdminJobPage"), "A page of jobs"), **errors},
            }
        },
    )
    spec.path(
        path="/api/admin/jobs/{job_id}",
        operations={
            "get": {
                "summary": "Any client's job (jobs:admin)",
                "security": secured,
                "parameters": [job_id],
                "responses": {
                    "200": _json(_ref("AdminJobEnvelope"), "The job"),
                    **_errors(401, 403, 404, 503, 500),
                },
            }
        },
    )
    spec.path(
        path="/api/admin/stats",
        operations={
            "get": {
                "summary": "Pending jobs, finished jobs by outcome, processing time, queues"
                " (jobs:admin)",
                "security": secured,
                "responses": {
                    "200": _json(_ref("StatsEnvelope"), "The counts"),
                    **_errors(401, 403, 503, 500),
                },
            }
        },
    )
    spec.path(
        path="/api/admin/dead-letters/replay",
        operations={
            "post": {
                "summary": "Move dead-lettered messages back to the work queue: all, by job id,"
                " or the oldest N (jobs:admin)",
                "security": secured,
                "requestBody": {"content": {JSON: {"schema": _ref("ReplayRequest")}}},
                "responses": {
                    "200": _json(_ref("ReplayedEnvelope"), "How many were replayed"),
                    **errors,
                },
            }
        },
    )


def _webhook_paths(spec: APISpec, secured: list[dict]) -> None:
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
    spec.path(
        path="/api/webhooks",
        operations={
            "post": {
                "summary": "Register a webhook endpoint" + scope,
                "description": "https only, a public address (unless WEBHOOK_ALLOW_INSECURE);"
                " events job.processed, job.failed. A URL refused answers 422 on $.url.",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("CreateWebhook")}},
                },
                "responses": {
                    "201": {
                        "description": "Created: the endpoint and its secret (shown only here)",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {JSON: {"schema": _ref("WebhookEndpointWithSecretEnvelope")}},
                    },
                    **_errors(401, 403, 408, 409, 413, 422, 503, 500),
                },
            },
            "get": {
                "summary": "The caller's webhook endpoints, without their secrets" + scope,
                "security": secured,
                "responses": {
                    "200": _json(_ref("WebhookList"), "The endpoints"),
                    **_errors(401, 403, 503, 500),
                },
            },
        },
    )
    spec.path(
        path="/api/webhooks/{endpoint_id}",
        operations={
            "get": {
                "summary": "One of the caller's webhook endpoints" + scope,
                "security": secured,
                "parameters": [endpoint_id],
                "responses": {
                    "200": _json(_ref("WebhookEndpointEnvelope"), "The endpoint"),
                    **_errors(401, 403, 404, 503, 500),
                },
            },
            "delete": {
                "summary": "Delete one of the caller's webhook endpoints" + scope,
                "security": secured,
                "parameters": [endpoint_id],
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(401, 403, 404, 503, 500),
                },
            },
        },
    )
    spec.path(
        path="/api/webhooks/{endpoint_id}/actions/rotate-secret",
        operations={
            "post": {
                "summary": "A new signing secret, shown once; the previous one signs beside it"
                " for WEBHOOK_SECRET_OVERLAP_SECONDS" + scope,
                "security": secured,
                "parameters": [endpoint_id],
                "responses": {
                    "200": _json(_ref("WebhookEndpointWithSecretEnvelope"), "The new secret"),
                    **_errors(401, 403, 404, 503, 500),
                },
            }
        },
    )
    spec.path(
        path="/api/webhooks/{endpoint_id}/deliveries",
        operations={
            "get": {
                "summary": "The endpoint's delivery attempts, newest first, a page at a time"
                + scope,
                "security": secured,
                "parameters": [endpoint_id, {"in": "query", "schema": hooks.DeliveriesQuerySchema}],
                "responses": {
                    "200": _json(_ref("WebhookDeliveriesPage"), "A page of attempts"),
                    **_errors(401, 403, 404, 422, 503, 500),
                },
            }
        },
    )
    spec.path(
        path="/api/admin/webhooks/dead-letters",
        operations={
            "get": {
                "summary": "How many webhooks wait in their dead-letter queue (jobs:admin)",
                "security": secured,
                "responses": {
                    "200": _json(_ref("WebhookDeadLettersEnvelope"), "The count"),
                    **_errors(401, 403, 500),
                },
            }
        },
    )
    spec.path(
        path="/api/admin/webhooks/dead-letters/replay",
        operations={
            "post": {
                "summary": "Deliver the webhooks' dead letters again, from the schedule's"
                " start: all, or the oldest N (jobs:admin)",
                "security": secured,
                "requestBody": {"content": {JSON: {"schema": _ref("WebhookReplayRequest")}}},
                "responses": {
                    "200": _json(_ref("WebhookReplayedEnvelope"), "How many were replayed"),
                    **_errors(401, 403, 422, 503, 500),
                },
            }
        },
    )


def openapi_document(registry: JobTypeRegistry) -> bytes:
    return orjson.dumps(build_openapi(registry))

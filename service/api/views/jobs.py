"""HTTP handlers: thin, over the job service; every body comes from `schemas/`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from typing import Any

from aiohttp import web

from schemas.encounter_package import KINDS_BY_COLLECTION
from schemas.entities import dump_entity
from schemas.envelope import Meta, dump_envelope
from schemas.health import dump_health
from schemas.jobs import dump_accepted, dump_job_data
from schemas.validation import json_object
from service.api.errors import NotFound, RequestValidationFailed
from service.api.keys import (
    ENTITY_STORE,
    JOB_EVENTS,
    JOB_SERVICE,
    JOB_STORE,
    LONG_POLL,
    OPENAPI_DOCUMENT,
    REQUEST_ID,
    REQUEST_URL,
    principal_of,
)
from service.api.middlewares import requires_scope
from service.api.responses import conditional_json_response, entity_tag, json_response
from service.domain.eta import retry_after
from service.domain.jobs import JobStatus, job_href
from service.observability.metrics import QUEUE_DEPTH, exposition
from service.usecases.jobs import JobNotFound


async def live(request: web.Request) -> web.Response:
    """The process serves requests; nothing else is asked."""
    status, body = dump_health(None, request[REQUEST_URL], request[REQUEST_ID])
    return json_response(body, status)


async def ready(request: web.Request) -> web.Response:
    """MongoDB answers a ping and the broker would take a message: else 503."""
    checks = {
        "mongodb": await request.app[JOB_STORE].ping(),
        "broker": await request.app[JOB_SERVICE].broker_ready(),
    }
    status, body = dump_health(checks, request[REQUEST_URL], request[REQUEST_ID])
    return json_response(body, status)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document, generated from the schemas once per process."""
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process; the queue depth is read from the broker now."""
    publisher = request.app[JOB_SERVICE].publisher
    depth = await publisher.queue_depth() if publisher is not None else None
    if depth is not None:
        QUEUE_DEPTH.set(depth)
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


@requires_scope("job:read")
async def get_job(request: web.Request) -> web.Response:
    """The job; with `?wait=N` or `Prefer: wait=N` (N <= 30 s), a pending job is answered as
    soon as it finishes, or after N seconds as it is then (long poll)."""
    job_id, client_id = request.match_info["job_id"], principal_of(request).client_id
    service = request.app[JOB_SERVICE]

    async def current() -> dict:
        try:
            return await service.job_for_client(job_id, client_id)
        except JobNotFound:
            raise NotFound("Job not found") from None

    job = await current()
    wait, preferred = long_poll_seconds(request)
    request[LONG_POLL] = bool(wait)
    if wait and job["status"] == JobStatus.PENDING:
        with request.app[JOB_EVENTS].waiting_for(job_id) as finished:
            job = await current()  # it may have finished before we listened
            if job["status"] == JobStatus.PENDING:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await finished.wait()
                job = await current()
    # A finished job's `data` and its ETag never change: made once, wrapped per request.
    status, data, tag = service.rendered(job_id, client_id, job, _rendered)
    body = dump_envelope(data, Meta(status, request[REQUEST_URL], request[REQUEST_ID]))
    response = conditional_json_response(request, body, status, tag)
    if preferred:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    if job["status"] == JobStatus.PENDING:
        response.headers["Retry-After"] = str(retry_after(job["eta"]))
    return response


MAX_WAIT_SECONDS = 30.0


def _rendered(job: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    status, data = dump_job_data(job)
    return status, data, entity_tag(data)


def long_poll_seconds(request: web.Request) -> tuple[float, bool]:
    """How long to wait for a pending job (0: not at all), and whether `Prefer` asked."""
    asked = request.query.get("wait")
    preferred = False
    if asked is None:
        preferences = ",".join(request.headers.getall("Prefer", []))
        for preference in preferences.split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() == "wait":
                asked, preferred = value.strip(), True
    try:
        seconds = float(asked) if asked is not None else 0.0
    except ValueError:
        return 0.0, False
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0, False
    return min(seconds, MAX_WAIT_SECONDS), preferred


@requires_scope("encounter:write")
async def submit_encounter_package(request: web.Request) -> web.Response:
    """The package is the body; the consumer validates and processes it."""
    return await _submit(request, "encounter_package.create")


@requires_scope("encounter:write")
async def cancel_encounter_package(request: web.Request) -> web.Response:
    """`{"encounter_id", "reason"?, "explanatory_letter"?}`: cancel a submitted encounter."""
    return await _submit(request, "encounter_package.cancel")


def _entity_scope(request: web.Request) -> str:
    kind = KINDS_BY_COLLECTION.get(request.match_info["collection"])
    if kind is None:
        raise NotFound("Not found")
    return f"{kind.entity}:read"


@requires_scope(_entity_scope)
async def get_entity(request: web.Request) -> web.Response:
    """What a processed job's link names: one entity of one patient."""
    kind = KINDS_BY_COLLECTION[request.match_info["collection"]]
    patient_id = _patient_id(request)
    entity_id = _uuid(request.match_info["entity_id"], "Not found")
    document = await request.app[ENTITY_STORE].get(kind, patient_id, entity_id)
    if document is None:
        raise NotFound(f"{kind.entity.replace('_', ' ').capitalize()} not found")
    body = dump_entity(kind, document, request[REQUEST_URL], request[REQUEST_ID])
    return conditional_json_response(request, body)


async def _submit(request: web.Request, job_type: str) -> web.Response:
    patient_id = _patient_id(request)
    data = await read_json_object(request)
    job, _ = await request.app[JOB_SERVICE].submit(
        principal_of(request), job_type, patient_id, data, request[REQUEST_ID]
    )
    body = dump_accepted(job, request[REQUEST_URL], request[REQUEST_ID])
    headers = {"Location": job_href(job["_id"]), "Retry-After": str(retry_after(job["eta"]))}
    return json_response(body, 202, headers=headers)


def _patient_id(request: web.Request) -> str:
    return _uuid(request.match_info["patient_id"], "Patient not found")


def _uuid(text: str, not_found: str) -> str:
    """The canonical form of a UUID in a path; anything else names nothing there is."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound(not_found) from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    data, invalid = json_object(await request.read())  # bounded: 413 past MAX_REQUEST_BYTES
    if data is None or invalid is not None:
        raise RequestValidationFailed("The body is not a usable JSON object", invalid=invalid)
    return data

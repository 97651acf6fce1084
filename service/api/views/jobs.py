"""A client's jobs, thin over the job service: `GET /api/jobs/{job_id}` (a poll, with a long
poll), `GET /api/jobs` (its own jobs, newest first) and `POST /api/jobs/{job_id}/actions/cancel`
(a pending job cancelled)."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from schemas.envelope import Meta, dump_envelope
from schemas.job_queries import CANCEL_REQUEST, dump_job_list, load_job_list_query
from schemas.jobs import dump_job_data
from schemas.validation import invalid_entries
from service.api.errors import Conflict, Forbidden, NotFound, RequestValidationFailed
from service.api.keys import (
    JOB_SERVICE,
    LONG_POLL,
    REQUEST_ID,
    REQUEST_URL,
    SERVICES,
    principal_of,
)
from service.api.middlewares import requires_scope
from service.api.requests import read_json_object
from service.api.responses import (
    conditional_json_response,
    entity_tag,
    envelope,
    json_response,
)
from service.domain.eta import retry_after
from service.domain.jobs import VALIDATION_FAILED_MESSAGE, JobStatus
from service.domain.principal import ScopeDenied
from service.usecases.jobs import JobAlreadyFinished, JobNotFound
from service.usecases.pending_polls import PendingPolls

ALREADY_FINISHED = "The job has already finished"


# Pending jobs answered from memory (`PendingPolls`; set by `create_app`).
PENDING_POLLS = web.AppKey("pending_polls", PendingPolls)


@requires_scope("job:read")
async def get_job(request: web.Request) -> web.Response:
    """The job; with `?wait=N` or `Prefer: wait=N` (N <= 30 s), a pending job is answered as
    soon as it finishes, or after N seconds as it is then (long poll).

    A job this process has just read pending is answered from memory for at most
    PENDING_JOB_CACHE_MS after that read, unless its finish is heard first
    (`service.usecases.pending_polls`); a long poll always reads."""
    job_id, client_id = request.match_info["job_id"], principal_of(request).client_id
    wait, preferred = long_poll_seconds(request)
    request[LONG_POLL] = bool(wait)
    app = request.app
    pending = app[PENDING_POLLS]
    kept = None if wait else pending.get(job_id, client_id)
    eta: datetime | None
    if kept is not None:
        status, data, tag, eta = kept
    else:
        service = app[JOB_SERVICE]
        read_at = time.monotonic()
        # A finished job kept (what `job_for_client` would look up first), else a read.
        job = service.finished_jobs.get(job_id, client_id)
        if job is None:
            try:
                job = await service.job_for_client(job_id, client_id, wait=wait)
            except JobNotFound:
                raise NotFound("Job not found") from None
        # A finished job's `data` and its ETag never change: made once, wrapped per request.
        status, data, tag = service.rendered(job_id, client_id, job, _rendered)
        eta = job["eta"] if job["status"] == JobStatus.PENDING else None
        if eta is not None:
            pending.keep(job_id, client_id, read_at, (status, data, tag), eta)
    body = envelope(data, status, request[REQUEST_URL], request[REQUEST_ID])
    response = conditional_json_response(request, body, status, tag)
    if preferred:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    if eta is not None:
        response.headers["Retry-After"] = str(retry_after(eta))
    return response


@requires_scope("job:read")
async def list_jobs(request: web.Request) -> web.Response:
    """`GET /api/jobs`: the caller's own jobs (its token's `client_id`), newest first, with
    the filters `status`, `type`, `since`, a `page_token` and a `limit` (`schemas.job_queries`);
    each item as `GET /api/jobs/{id}` renders its `data`, after its `id` and `type`."""
    client_id = principal_of(request).client_id
    try:
        query = load_job_list_query(
            request.query.items(), client_id, request.app[SERVICES].registry.names
        )
    except ValidationError as error:
        invalid = invalid_entries(error.messages)
        raise RequestValidationFailed(VALIDATION_FAILED_MESSAGE, invalid=invalid) from None
    jobs, next_after = await request.app[JOB_SERVICE].jobs_of_client(query)
    meta = Meta(200, request[REQUEST_URL], request[REQUEST_ID])
    return json_response(dump_job_list(jobs, next_after, query, meta))


@requires_scope("job:read")
async def cancel_job(request: web.Request) -> web.Response:
    """`POST /api/jobs/{job_id}/actions/cancel`: the caller's pending job ends `failed` 499;
    200 with the job as `GET /api/jobs/{id}` renders it. 404 as a poll answers (not the
    caller's, or no such job); 403 unless the token also holds the scope that submitting a
    job of its type needs; 409 once the job has finished. The body: none, or `{}`."""
    if request.can_read_body:
        values = await read_json_object(request)
        try:
            CANCEL_REQUEST.load(values)
        except ValidationError as error:
            invalid = invalid_entries(error.messages)
            raise RequestValidationFailed(VALIDATION_FAILED_MESSAGE, invalid=invalid) from None
    try:
        job = await request.app[JOB_SERVICE].cancel(
            request.match_info["job_id"], principal_of(request), request.app[SERVICES].registry
        )
    except JobNotFound:
        raise NotFound("Job not found") from None
    except ScopeDenied as denied:
        raise Forbidden(str(denied)) from None
    except JobAlreadyFinished:
        raise Conflict(ALREADY_FINISHED) from None
    status, data = dump_job_data(job)
    body = dump_envelope(data, Meta(status, request[REQUEST_URL], request[REQUEST_ID]))
    return json_response(body, status)


MAX_WAIT_SECONDS = 30.0


def _rendered(job: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    status, data = dump_job_data(job)
    return status, data, entity_tag(data)


def long_poll_seconds(request: web.Request) -> tuple[float, bool]:
    """How long to wait for a pending job (0: not at all), and whether `Prefer` asked."""
    if not request.query_string and "Prefer" not in request.headers:
        return 0.0, False  # a plain poll: nothing to parse
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

"""`GET /api/jobs/{job_id}`: a client polls its job, thin over the job service."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from schemas.envelope import Meta, dump_envelope
from schemas.jobs import dump_job_data
from service.api.errors import NotFound
from service.api.keys import (
    JOB_SERVICE,
    LONG_POLL,
    REQUEST_ID,
    REQUEST_URL,
    principal_of,
)
from service.api.middlewares import requires_scope
from service.api.responses import conditional_json_response, entity_tag
from service.domain.eta import retry_after
from service.domain.jobs import JobStatus
from service.usecases.jobs import JobNotFound


@requires_scope("job:read")
async def get_job(request: web.Request) -> web.Response:
    """The job; with `?wait=N` or `Prefer: wait=N` (N <= 30 s), a pending job is answered as
    soon as it finishes, or after N seconds as it is then (long poll)."""
    job_id, client_id = request.match_info["job_id"], principal_of(request).client_id
    service = request.app[JOB_SERVICE]
    wait, preferred = long_poll_seconds(request)
    request[LONG_POLL] = bool(wait)
    try:
        job = await service.job_for_client(job_id, client_id, wait=wait)
    except JobNotFound:
        raise NotFound("Job not found") from None
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

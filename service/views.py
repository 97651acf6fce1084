"""HTTP handlers: thin, over the job service; every body comes from `schemas/`."""

from __future__ import annotations

from aiohttp import web

from schemas.jobs import dump_job
from service.errors import NotFound
from service.job_service import JobNotFound
from service.keys import JOB_SERVICE, REQUEST_ID, principal_of
from service.middlewares import requires_scope
from service.responses import json_response


@requires_scope("job:read")
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        job = await request.app[JOB_SERVICE].job_for_client(job_id, principal_of(request).client_id)
    except JobNotFound:
        raise NotFound("Job not found") from None
    status, body = dump_job(job, str(request.url), request[REQUEST_ID])
    return json_response(body, status)

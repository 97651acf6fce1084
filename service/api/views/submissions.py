"""Submissions over HTTP: one handler per job type that declares an HTTP submission."""

from __future__ import annotations

from aiohttp import web

from schemas.jobs import dump_accepted
from service.api.errors import ApiError, Conflict, NotFound, RequestValidationFailed
from service.api.keys import JOB_SERVICE, REQUEST_ID, REQUEST_URL, principal_of
from service.api.middlewares import HandlerFunction, requires_scope
from service.api.requests import canonical_uuid, patient_id_of, read_json_object
from service.api.responses import json_response
from service.domain.eta import retry_after
from service.domain.jobs import VALIDATION_FAILED_MESSAGE, job_href
from service.usecases.job_types import JobType
from service.usecases.jobs import SubmissionRefused


def submission_handler(job_type: JobType) -> HandlerFunction:
    """`job_type`'s submission: the body is its `data`. What the original checks on the
    request is answered at once (404, 409, 422 in the error envelope); the consumer checks
    and processes the rest. The answer is 202 with the pending job (or the pending job of an
    identical one)."""

    @requires_scope(job_type.required_scope)
    async def submit(request: web.Request) -> web.Response:
        patient_id = patient_id_of(request)
        # The path's other parameters (`{episode_id}`): UUIDs, or nothing there is (404).
        params = {
            name: canonical_uuid(value, "Not found")
            for name, value in request.match_info.items()
            if name != "patient_id"
        }
        data = await read_json_object(request)
        try:
            job, _ = await request.app[JOB_SERVICE].submit(
                principal_of(request), job_type, patient_id, data, request[REQUEST_ID], params
            )
        except SubmissionRefused as refused:
            raise _api_error(refused) from None
        body = dump_accepted(job, request[REQUEST_URL], request[REQUEST_ID])
        headers = {"Location": job_href(job["_id"]), "Retry-After": str(retry_after(job["eta"]))}
        return json_response(body, 202, headers=headers)

    submit.__name__ = submit.__qualname__ = f"submit_{job_type.name.replace('.', '_')}"
    return submit


def _api_error(refused: SubmissionRefused) -> ApiError:
    if refused.status == 404:
        return NotFound(refused.message)
    if refused.status == 409:
        return Conflict(refused.message)
    return RequestValidationFailed(VALIDATION_FAILED_MESSAGE, invalid=refused.invalid)

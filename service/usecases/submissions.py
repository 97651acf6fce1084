"""A submission: the message body the HTTP API publishes (and a producer sends) and the
consumer reads, how a body that arrives is parsed, and the pending job a submission is
recorded as.

    {"type": "encounter_package.create", "patient_id": "<uuid>",
     "requested_by": {"client_id", "user_id", "scope"}, "data": {...}}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from schemas.rules import Rule
from schemas.submission import MAX_BODY_BYTES, SUBMISSION
from schemas.validation import MAX_JSON_DEPTH, invalid_entries, json_object, single_entry
from service.domain.clock import utcnow
from service.domain.jobs import NewJob, pending_eta
from service.domain.principal import Principal
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.usecases.cpu_bound import sized_work

# The type a job is recorded with when its body names none that can be stored.
UNKNOWN_TYPE = "unknown"
# The original's words, on its POST (404, 409) and in its jobs.
PATIENT_NOT_FOUND = "Patient not found"
PATIENT_NOT_ACTIVE = "Person is not active"
# How many times a pending job is inserted when the job met under its id vanishes before it
# can be read (`PendingJobs.create`).
CREATE_TRIES = 3


def submission_body(
    job_type: str,
    patient_id: str,
    principal: Principal,
    data: dict[str, Any],
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The message the HTTP API publishes for a request: the request itself as `data`, its
    path parameters besides the patient as `params`."""
    body = {
        "type": job_type,
        "patient_id": patient_id,
        "requested_by": {
            "client_id": principal.client_id,
            "user_id": principal.user_id,
            "scope": principal.scope_text,
        },
        "data": data,
    }
    if params:
        body["params"] = params
    return body


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """The body as far as it could be read: `raw` is the JSON object (or None), `invalid`
    the entries of a 422 when the body is unusable."""

    raw: dict[str, Any] | None
    submission: dict[str, Any] | None
    invalid: list[dict[str, Any]] | None
    size: int = 0  # bytes: whether its checks are worth a thread (`usecases.cpu_bound`)


def parse_body(body: bytes) -> ParsedBody:
    size = len(body)
    if size > MAX_BODY_BYTES:
        rule = Rule(
            "length", f"the body is larger than {MAX_BODY_BYTES} bytes", {"max": MAX_BODY_BYTES}
        )
        return ParsedBody(None, None, single_entry([], rule), size)
    # A submission holds its request one level down (`data`): a request the API accepted at
    # the deepest it allows is one level deeper here.
    raw, invalid = json_object(body, MAX_JSON_DEPTH + 1)
    if invalid is not None:
        return ParsedBody(raw, None, invalid, size)
    assert raw is not None  # `json_object` gives the object whenever it finds it usable
    try:
        return ParsedBody(raw, SUBMISSION.load(raw), None, size)
    except ValidationError as exc:
        return ParsedBody(raw, None, invalid_entries(exc.messages), size)


async def parse_body_off_loop(body: bytes) -> ParsedBody:
    """`parse_body`, in a thread when the body is large."""
    return await sized_work(len(body), parse_body, body)


def short_text(mapping: Any, key: str, limit: int = 255) -> str | None:
    """`mapping[key]` when it is a string of 1 to `limit` characters; else None. What a body
    that may be invalid says, as far as it can be stored."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


class PendingJobs:
    """Recording a submission as a pending job: the one way both the HTTP API (as it
    publishes) and the consumer (for a message a producer published straight to the broker)
    create a job."""

    def __init__(
        self, store: JobStore, estimate_eta: Callable[[], Awaitable[datetime]] | None = None
    ) -> None:
        self.store = store
        self._estimate_eta = estimate_eta

    async def eta(self) -> datetime:
        """When a job submitted now should be done: estimated from the load, or a fixed
        offset where no estimate can be made."""
        return await self._estimate_eta() if self._estimate_eta else pending_eta(utcnow())

    async def create(
        self,
        job_id: str,
        *,
        job_type: str,
        client_id: str | None,
        user_id: str | None,
        patient_id: str | None,
        request_hash: str,
        request_id: str,
        eta: datetime | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert the pending job; returns it and whether it is new (the job already stored
        under the id otherwise: an HTTP submission's, an earlier delivery's)."""
        job = NewJob(
            job_id=job_id,
            type=job_type,
            hash=request_hash,
            client_id=client_id,
            user_id=user_id,
            request_id=request_id,
            eta=eta or await self.eta(),
            patient_id=patient_id,
        )
        # The job stored under the id can be removed between the insert that met it and the
        # read of it (the retention sweep): inserted again then, as a moment later it would be.
        for _ in range(CREATE_TRIES):
            created, new = await self.store.create_pending(job)
            if created is not None:
                return created, new
        raise StoreUnavailable(f"the job {job_id} kept vanishing as it was created: try again")

"""The job: its statuses, ids, links, the new job as stored, and the outcomes that end it.

Pure logic shared by every entrypoint; it knows nothing of MongoDB, RabbitMQ or HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, Self

import orjson

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A stored error is capped at 10,000 bytes by trimming `invalid`, as eHealth's medical events
# service does: the job document stays small, however many errors a package has.
MAX_ERROR_BYTES = 10_000
# Messages are short; with the cap on `invalid`, every stored error stays under 10,000 bytes.
MAX_MESSAGE_LENGTH = 1_000
# How far ahead a new job's `eta` lies when no estimate can be made (usecases.eta makes one).
PENDING_ETA = timedelta(seconds=30)


class JobStatus(IntEnum):
    """Stored as integers, as eHealth's medical events service stores them."""

    PENDING = 0
    PROCESSED = 1
    FAILED = 2
    FAILED_WITH_ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_terminal(self) -> bool:
        return self is not JobStatus.PENDING


def is_valid_job_id(job_id: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(job_id) is not None


def new_job_id() -> str:
    """A URL-safe random id of 22 characters, shaped like eHealth's job ids
    (`NBXk9EyErUZv1RhXgyvgg`)."""
    return secrets.token_urlsafe(16)


def pending_eta(now: datetime) -> datetime:
    return now + PENDING_ETA


def submission_hash(submission: dict[str, Any]) -> str:
    """The hash of a request (its body and the entity its route names), its user and its
    client: identical pending submissions share it."""
    requested_by = submission.get("requested_by") or {}
    canonical = {
        "type": submission.get("type"),
        "patient_id": submission.get("patient_id"),
        "client_id": requested_by.get("client_id") if isinstance(requested_by, dict) else None,
        "user_id": requested_by.get("user_id") if isinstance(requested_by, dict) else None,
        "data": submission.get("data"),
    }
    if submission.get("params"):  # the entity a route names (`episode_id`): part of the request
        canonical["params"] = submission["params"]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def job_id_of_message(
    message_id: str | None,
    body: bytes,
    timestamp: object,
    correlation_id: str | None,
    *,
    body_is_object: bool,
) -> str | None:
    """The job id of a submission message: its `message_id` when that is a valid job id.

    Without a `message_id`, a body that is a JSON object gets an id derived from it and the
    producer's `timestamp` and `correlation_id`, so that a redelivery maps to the same job; a
    producer that wants to poll at once sets `message_id` itself. None when there is no
    usable id: a bad `message_id`, or none and a body that is no submission at all.
    """
    if message_id is not None:
        return message_id if is_valid_job_id(message_id) else None
    if not body_is_object:
        return None
    digest = hashlib.sha256(body)
    digest.update(repr((timestamp, correlation_id)).encode())
    return base64.urlsafe_b64encode(digest.digest()).decode()[:22]


def job_href(job_id: str) -> str:
    return f"/api/jobs/{job_id}"


def entity_href(patient_id: str, collection: str, entity_id: str) -> str:
    return f"/api/patients/{patient_id}/{collection}/{entity_id}"


@dataclass(frozen=True, slots=True)
class Link:
    entity: str
    href: str

    def to_document(self) -> dict[str, str]:
        return {"entity": self.entity, "href": self.href}


def order_key(inserted_at: datetime, job_id: str) -> str:
    """A job's place in the operators' list: its insertion time as 17 digits (UTC, to the
    millisecond), so that the strings sort as the times do, then its id, which breaks ties.
    One field, so that one index serves both the filter and the sort on any MongoDB, and a page
    ends at a key no other job has (`order_key(since, "")` sorts before every job inserted at
    `since` or later). Digits, not ISO 8601: the test server compares strings that look like
    dates as dates, and `$lt` on such a string matches nothing there."""
    at = inserted_at.astimezone(UTC)
    return f"{at.year:04d}" + at.strftime("%m%d%H%M%S") + f"{at.microsecond // 1000:03d}|{job_id}"


@dataclass(frozen=True, slots=True)
class NewJob:
    job_id: str
    type: str
    hash: str
    # None when a producer's body did not say (its job then fails with a 422 nobody reads).
    client_id: str | None
    user_id: str | None
    request_id: str
    eta: datetime
    # Shown to operators (the dashboard); None when the body did not say.
    patient_id: str | None = None

    def to_document(self, now: datetime) -> dict[str, Any]:
        return {
            "_id": self.job_id,
            "type": self.type,
            "status": int(JobStatus.PENDING),
            "status_code": 202,
            "hash": self.hash,
            "client_id": self.client_id,
            "user_id": self.user_id,
            "request_id": self.request_id,
            "patient_id": self.patient_id,
            "eta": self.eta,
            "inserted_at": now,
            "updated_at": now,
            "order_key": order_key(now, self.job_id),
            "attempts": 0,
        }


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What an operator asks of the job list. `after` is the `order_key` of the last job of
    the previous page."""

    status: JobStatus | None = None
    type: str | None = None
    client_id: str | None = None
    since: datetime | None = None
    after: str | None = None
    oldest_first: bool = False
    limit: int = 50


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended: what the store writes when it leaves `pending`.

    `error` is stored in one shape whatever the status code, `{"type", "message"}` plus
    `invalid` for validation failures; the response schemas decide how each code renders it.
    """

    status: JobStatus
    status_code: int
    links: tuple[Link, ...] = ()
    error: dict[str, Any] | None = field(default=None)

    @classmethod
    def processed(cls, links: list[Link] | tuple[Link, ...]) -> Self:
        return cls(JobStatus.PROCESSED, 200, links=tuple(links))

    @classmethod
    def failed(cls, status_code: int, error_type: str, message: str) -> Self:
        error = {"type": error_type, "message": message[:MAX_MESSAGE_LENGTH]}
        return cls(JobStatus.FAILED, status_code, error=error)

    @classmethod
    def validation_failed(
        cls, invalid: list[dict[str, Any]], message: str | None = None, *, incomplete: bool = False
    ) -> Self:
        """`incomplete`: checking stopped before the end (the schemas' error budget)."""
        error: dict[str, Any] = {
            "type": "validation_failed",
            "message": (message or VALIDATION_FAILED_MESSAGE)[:MAX_MESSAGE_LENGTH],
            "invalid": invalid,
        }
        if incomplete:
            error["invalid_incomplete"] = True
        return cls(JobStatus.FAILED, 422, error=cap_error(error))

    @classmethod
    def failed_with_error(cls, message: str) -> Self:
        return cls(
            JobStatus.FAILED_WITH_ERROR,
            500,
            error={"type": "internal_error", "message": message[:MAX_MESSAGE_LENGTH]},
        )

    @classmethod
    def cancelled(cls) -> Self:
        """Cancelled by its client while pending (`POST /api/jobs/{id}/actions/cancel`):
        AIP-151's CANCELLED, HTTP 499, rendered as the other object errors are."""
        return cls.failed(CANCELLED_STATUS_CODE, "cancelled", CANCELLED_MESSAGE)

    def to_update(self) -> dict[str, Any]:
        """The `$set` part of the update that ends the job."""
        update: dict[str, Any] = {"status": int(self.status), "status_code": self.status_code}
        if self.status is JobStatus.PROCESSED:
            update["response"] = [link.to_document() for link in self.links]
        else:
            update["error"] = self.error
        return update


# A job its client cancelled: 499 ("client closed request", AIP-151's CANCELLED).
CANCELLED_STATUS_CODE = 499
CANCELLED_MESSAGE = "The job was cancelled by its client"

# The original's words. The published page cuts the address short ("#introduction/
# interacting"); its code, which MIS developers see in real answers, has it whole.
VALIDATION_FAILED_MESSAGE = (
    "Validation failed. You can find validators description at our API Manifest: "
    "http://docs.apimanifest.apiary.io/#introduction/interacting-with-api/errors."
)


def cap_error(error: dict[str, Any], limit: int = MAX_ERROR_BYTES) -> dict[str, Any]:
    """The error within `limit` bytes, as the original cuts a stored error: first every
    rule's `params` emptied (an unknown property's value, a dictionary's codes can be large),
    then `invalid` trimmed from the end.

    The first entries are kept: they are the ones a client fixes first. When entries were
    dropped, `invalid_total` tells the client how many there were in all.
    """
    if len(orjson.dumps(error)) <= limit:
        return error
    invalid = [
        {**entry, "rules": [{**r, "params": []} if r.get("params") else r for r in entry["rules"]]}
        if isinstance(entry, dict) and isinstance(entry.get("rules"), list)
        else entry
        for entry in error.get("invalid") or []
    ]
    error = {**error, "invalid": invalid}
    if len(orjson.dumps(error)) <= limit:
        return error
    total = len(invalid)
    low, high = 0, total
    while low < high:  # the largest prefix that fits
        middle = (low + high + 1) // 2
        candidate = {**error, "invalid": invalid[:middle], "invalid_total": total}
        if len(orjson.dumps(candidate)) <= limit:
            low = middle
        else:
            high = middle - 1
    return {**error, "invalid": invalid[:low], "invalid_total": total}

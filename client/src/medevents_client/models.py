"""Typed results: a job as `GET /api/jobs/{id}` renders it, its links and its error."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"
    FAILED_WITH_ERROR = "failed_with_error"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (it never changes again)."""
        return self is not JobStatus.PENDING


@dataclass(frozen=True, slots=True)
class Link:
    """What a job points at: itself while pending, each entity it created once processed.
    `href` is as the API wrote it (`/api/patients/{patient_id}/{collection}/{id}`)."""

    entity: str
    href: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule an entry broke: `required`, `cast`, `inclusion`, `invalid`, ..."""

    rule: str
    params: Any
    description: str


@dataclass(frozen=True, slots=True)
class InvalidEntry:
    """Where a request failed validation: `entry` is a JSONPath (`$.encounter.id`)."""

    entry_type: str
    entry: str
    rules: list[Rule]


@dataclass(frozen=True, slots=True)
class JobError:
    """A failed job's error, or the error of a request itself (`MedeventsError.invalid`).

    `type` is `validation_failed` (with `invalid`), `request_conflict`, `internal_error`,
    `cancelled`, ...; `invalid_total` is set when the stored list was trimmed to its size cap,
    `invalid_incomplete` when checking stopped before the end of the request."""

    type: str | None
    message: str
    invalid: list[InvalidEntry] = field(default_factory=list)
    invalid_total: int | None = None
    invalid_incomplete: bool = False


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the API last rendered it.

    `status_code` is the outcome's HTTP-like code as an integer (the API writes it as a string,
    `"422"`); None while pending. `error` is a `JobError`, or a plain string for the codes
    whose error eHealth renders as its message alone (403 and 404), or None. `http_status` is
    the status of the response that carried it (200, 202, or 303 for a processed job);
    `etag` its entity tag; `retry_after` the seconds the API asked a poller to wait (pending
    jobs only). `data` is the response's `data` as received, `body` the whole response
    (`data` and `meta`: for a 304, the body of the response it confirmed)."""

    id: str
    status: JobStatus
    eta: datetime | None = None
    status_code: int | None = None
    links: list[Link] = field(default_factory=list)
    error: JobError | str | None = None
    type: str | None = None
    http_status: int | None = None
    etag: str | None = None
    retry_after: float | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    body: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def error_message(self) -> str | None:
        """The error's message, whichever form it has."""
        if isinstance(self.error, JobError):
            return self.error.message
        return self.error

    @classmethod
    def from_data(
        cls,
        data: dict[str, Any],
        *,
        job_id: str | None = None,
        http_status: int | None = None,
        etag: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> Job:
        """A job from the `data` of a job response (or an item of `GET /api/jobs`, which
        carries its `id` and `type`)."""
        links = [Link(str(link["entity"]), str(link["href"])) for link in data.get("links") or []]
        found_id = job_id or data.get("id") or job_id_of_links(links)
        if not found_id:
            raise ValueError("the job's id is neither known nor in its links")
        code = data.get("status_code")
        return cls(
            id=str(found_id),
            status=JobStatus(data["status"]),
            eta=parse_time(data.get("eta")),
            status_code=int(code) if code not in (None, "") else None,
            links=links,
            error=parse_job_error(data.get("error")),
            type=data.get("type"),
            http_status=http_status,
            etag=etag,
            retry_after=retry_after,
            data=data,
            body=body if body is not None else {"data": data},
        )


def job_id_of_links(links: list[Link]) -> str | None:
    """The id in a pending job's link to itself (`/api/jobs/{id}`)."""
    for link in links:
        if link.entity == "job":
            return link.href.rstrip("/").rsplit("/", 1)[-1]
    return None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (`2018-08-02T10:45:16.000Z`; one without a zone is taken as UTC), or
    None when there is none or it cannot be read."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_invalid(entries: Any) -> list[InvalidEntry]:
    if not isinstance(entries, list):
        return []
    return [
        InvalidEntry(
            entry_type=str(entry.get("entry_type", "")),
            entry=str(entry.get("entry", "")),
            rules=[
                Rule(
                    rule=str(rule.get("rule", "")),
                    params=rule.get("params"),
                    description=str(rule.get("description", "")),
                )
                for rule in entry.get("rules") or []
                if isinstance(rule, dict)
            ],
        )
        for entry in entries
        if isinstance(entry, dict)
    ]


def parse_job_error(error: Any) -> JobError | str | None:
    if error is None or isinstance(error, str):
        return error
    if not isinstance(error, dict):
        return str(error)
    total = error.get("invalid_total")
    return JobError(
        type=error.get("type"),
        message=str(error.get("message", "")),
        invalid=parse_invalid(error.get("invalid")),
        invalid_total=int(total) if isinstance(total, int) else None,
        invalid_incomplete=bool(error.get("invalid_incomplete", False)),
    )

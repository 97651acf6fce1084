"""`AsyncClient`: the medevents job API over aiohttp.

Timeouts and retries (docs/client.md, "Timeouts and retries"):

- `timeout` bounds each request (connecting, sending, reading the answer); a long poll gets the
  seconds it asks the server to wait on top. `wait(job_id, timeout)` has its own overall bound.
- A GET (`get_job`, `follow`, `list_jobs`) is sent again, up to `retries` times, after a 503
  (after its `Retry-After`, plus jitter) or when no answer came (a refused or broken
  connection, a timeout): it changes nothing on the server.
- A POST (`submit`, `cancel`) is sent again, up to `retries` times, only when no job can be
  waiting on it: after a 503 (the service answers 503 when MongoDB or the broker is down: no
  job was recorded, or the one recorded was ended at once because its message was not
  queued, or, MongoDB lost in between, it is ended by the service's reconciler) or when the
  connection could not be made (nothing was sent). Never after a timeout or a connection
  broken once the request was sent: it may have created the job; `ConnectionFailed(sent=True)`
  is raised and the caller decides (an identical submission while the first is pending
  returns the same job).
- `wait` polls with `?wait=` (the server's maximum, 30 s, or what is left), sends
  `If-None-Match` with the last ETag, and retries 503s and connection failures for as long as
  its timeout allows; it never gives up on them earlier.
- Each delay is "full jitter": a random time between 0 and `backoff * 2**attempt` (at most
  `max_backoff`), after the `Retry-After` of a 503 when it has one.
- Nothing else is retried: 4xx answers and other 5xx raise at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from ._version import __version__
from .errors import (
    ConnectionFailed,
    MedeventsError,
    ServiceUnavailable,
    error_for,
    retry_after_seconds,
)
from .models import Job, JobStatus, Link

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 10.0
# The longest `?wait=` the API honours (service/api/views/jobs.py, MAX_WAIT_SECONDS).
MAX_LONG_POLL_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 300.0

Token = str | Callable[[], str]


@dataclass(frozen=True, slots=True)
class Answer:
    """A response read whole: its status, headers and JSON body (empty when not JSON)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: dict[str, Any]
    reason: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of `GET /api/jobs`: its jobs and the token of the next page (None: the last)."""

    jobs: list[Job]
    next_page_token: str | None


class AsyncClient:
    """The medevents API for asyncio code: `async with AsyncClient(url, token) as client:`.

    `token` is a bearer token, or a function returning the current one (called per request).
    `session` is an aiohttp session of the caller's (not closed by the client);
    `trace_configs` are given to the session the client makes."""

    def __init__(
        self,
        base_url: str,
        token: Token,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        session: aiohttp.ClientSession | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be positive; retries and backoffs not negative")
        self.base_url = base_url if base_url.endswith("/") else f"{base_url}/"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Every request sent, retries and long polls included.
        self.requests_sent = 0
        self._token = token
        self._session = session
        self._own_session = session is None
        self._trace_configs = trace_configs
        self._origin = _origin(self.base_url)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- the operations ---

    async def submit(
        self, path: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> Job:
        """POST a submission (`/api/patients/{patient_id}/encounter_package`, ...): the pending
        job of the 202 (an identical submission still pending answers the same job)."""
        headers = {"x-request-id": request_id} if request_id else {}
        answer = await self._call(
            "POST", self.url(path), json_body=dict(body), headers=headers, idempotent=False
        )
        return self._job(answer, _job_id_of_location(answer.header("Location")))

    async def submit_encounter_package(
        self, patient_id: str, visit: Mapping[str, Any], signed_data: str, **options: Any
    ) -> Job:
        """POST `{"visit", "signed_data"}` to the patient's `encounter_package`."""
        path = f"api/patients/{quote(patient_id, safe='')}/encounter_package"
        return await self.submit(
            path, {"visit": dict(visit), "signed_data": signed_data}, **options
        )

    async def get_job(self, job_id: str) -> Job:
        """The job as it is now (one GET, no waiting; a processed job's 303 is not followed)."""
        answer = await self._call("GET", self._job_url(job_id), idempotent=True)
        return self._job(answer, job_id)

    async def wait(
        self,
        job_id: str,
        timeout: float = DEFAULT_WAIT_SECONDS,  # noqa: ASYNC109 - the wait's own overall bound
    ) -> Job:
        """The job once it has ended, or as it is when `timeout` seconds have passed (check
        `job.terminal`). Long polls (`?wait=`, at most 30 s each) with `If-None-Match`;
        a server that answers a pending job before the wait it was asked for (no long poll
        there) is polled again after its `Retry-After`. 503s and connection failures are
        retried with jittered backoff until the timeout, then the last one is raised if no
        job was ever read. Other errors (401, 403, 404, ...) raise at once."""
        deadline = time.monotonic() + timeout
        url = self._job_url(job_id)
        job: Job | None = None
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return job if job is not None else await self.get_job(job_id)
            poll = min(MAX_LONG_POLL_SECONDS, remaining)
            headers = {"If-None-Match": job.etag} if job is not None and job.etag else {}
            asked = time.monotonic()
            failure: MedeventsError
            try:
                answer = await self._send(
                    "GET",
                    url,
                    params={"wait": _seconds(poll)},
                    headers=headers,
                    seconds=poll + self.timeout,
                )
            except ConnectionFailed as exc:
                failure, delay = exc, self._delay(failures)
            else:
                if answer.status in (200, 303) or (answer.status == 304 and job is not None):
                    if answer.status == 304 and job is not None:  # unchanged
                        job = replace(job, retry_after=_retry_after(answer))
                    else:
                        job = self._job(answer, job_id)
                    if job.terminal:
                        return job
                    failures = 0
                    if time.monotonic() - asked < poll - 1.0:
                        # Answered before the wait asked for: no long poll there. Come back
                        # when the server asks (Retry-After), within the time left.
                        pause = job.retry_after if job.retry_after is not None else 1.0
                        await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                    continue  # else the long poll ran its course: the next one at once
                error = error_for(answer.status, answer.body, answer.headers, answer.reason)
                if not isinstance(error, ServiceUnavailable):
                    raise error
                failure, delay = error, (error.retry_after or 0) + self._delay(failures)
            failures += 1
            if time.monotonic() + delay >= deadline:
                if job is not None:
                    return job
                raise failure
            await asyncio.sleep(delay)

    async def follow(self, link: Link | str) -> dict[str, Any]:
        """The `data` of what a link names (an entity a processed job created). A relative
        href is resolved against `base_url`; one naming another origin is refused (the
        token is never sent elsewhere)."""
        href = link.href if isinstance(link, Link) else link
        answer = await self._call("GET", self.url(href), idempotent=True)
        data = answer.body.get("data")
        return data if isinstance(data, dict) else answer.body

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        type: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """The caller's jobs, newest first, through every page (`limit` is the page size):
        `async for job in client.list_jobs(status="failed"):`."""
        token: str | None = None
        while True:
            page = await self.list_jobs_page(
                status=status, type=type, since=since, limit=limit, page_token=token
            )
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def list_jobs_page(
        self,
        *,
        status: JobStatus | str | None = None,
        type: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> JobPage:
        """One page of `GET /api/jobs`."""
        params = {
            "status": str(status) if status is not None else None,
            "type": type,
            "since": _time_text(since) if since is not None else None,
            "limit": str(limit) if limit is not None else None,
            "page_token": page_token,
        }
        answer = await self._call(
            "GET",
            self.url("api/jobs"),
            params={k: v for k, v in params.items() if v is not None},
            idempotent=True,
        )
        items = answer.body.get("data") or []
        paging = answer.body.get("paging") or {}
        jobs = [Job.from_data(item, http_status=answer.status) for item in items]
        return JobPage(jobs, paging.get("next_page_token") or None)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending job: it ends `failed`, status code 499, error type `cancelled`.
        `Conflict` (409) when it had already ended, `NotFound` (404) when there is none."""
        url = f"{self._job_url(job_id)}/actions/cancel"
        answer = await self._call("POST", url, idempotent=False)
        return self._job(answer, job_id)

    # --- URLs ---

    def url(self, href: str) -> str:
        """`href` resolved against `base_url` (RFC 3986); another origin is a ValueError."""
        resolved = urljoin(self.base_url, href)
        if _origin(resolved) != self._origin:
            raise ValueError(f"{href!r} is not on {self._origin}: the token is not sent there")
        return resolved

    def _job_url(self, job_id: str) -> str:
        return self.url(f"api/jobs/{quote(job_id, safe='')}")

    # --- sending ---

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> Answer:
        """One request, sent again as the retry policy allows; an error answer raised."""
        attempt = 0
        while True:
            failure: MedeventsError
            try:
                answer = await self._send(
                    method, url, params=params, json_body=json_body, headers=headers
                )
            except ConnectionFailed as exc:
                if exc.sent and not idempotent:
                    raise  # it may have been done: never sent twice
                failure, delay = exc, self._delay(attempt)
            else:
                if answer.status < 400:
                    return answer
                error = error_for(answer.status, answer.body, answer.headers, answer.reason)
                if not isinstance(error, ServiceUnavailable):
                    raise error
                failure, delay = error, (error.retry_after or 0) + self._delay(attempt)
            if attempt >= self.retries:
                raise failure
            attempt += 1
            await asyncio.sleep(delay)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        seconds: float | None = None,
    ) -> Answer:
        """One request, read whole; no answer is `ConnectionFailed`. Redirects are never
        followed (a processed job answers 303 with its links in the body)."""
        session = self._get_session()
        sent_headers = {"Authorization": f"Bearer {self._current_token()}", **(headers or {})}
        self.requests_sent += 1
        try:
            async with session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=sent_headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds or self.timeout),
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason or ""
                response_headers = CIMultiDict(response.headers)
        except aiohttp.ClientConnectorError as exc:  # nothing was sent
            raise ConnectionFailed(f"cannot connect to {url}: {exc}", sent=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectionFailed(f"{method} {url}: {what}", sent=True) from exc
        return Answer(status, response_headers, _json_object(raw), reason)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._own_session:
                raise RuntimeError("the session given to the client is closed")
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                trace_configs=self._trace_configs,
            )
        return self._session

    def _current_token(self) -> str:
        return self._token() if callable(self._token) else self._token

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the exponential bound."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _job(self, answer: Answer, job_id: str | None) -> Job:
        data = answer.body.get("data")
        if not isinstance(data, dict) or "status" not in data:
            raise MedeventsError(
                f"the answer ({answer.status}) is not a job", status=answer.status, body=answer.body
            )
        return Job.from_data(
            data,
            job_id=job_id,
            http_status=answer.status,
            etag=answer.header("ETag"),
            retry_after=_retry_after(answer),
            body=answer.body,
        )


USER_AGENT = f"medevents-client/{__version__}"


def _retry_after(answer: Answer) -> float | None:
    return retry_after_seconds(answer.header("Retry-After"))


def _job_id_of_location(location: str | None) -> str | None:
    if not location:
        return None
    return urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1] or None


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _time_text(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

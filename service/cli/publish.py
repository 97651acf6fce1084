"""`medevents publish FILE`: a producer that publishes a submission straight to RabbitMQ, and
with `--wait` polls the job to its end; its exit code says how it ended (`EXIT_CODES`)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from medevents_client import (
    AsyncClient,
    ConnectionFailed,
    Forbidden,
    Job,
    JobStatus,
    MedeventsError,
    NotFound,
    ServerError,
    Unauthorized,
)

from service.api.auth import mint_token, signing_secret
from service.bootstrap import Services
from service.config import Settings
from service.domain.jobs import job_href, new_job_id
from service.messaging.broker import BrokerUnavailable
from service.signatures import SignatureRejected, decode_unsigned, encode_unsigned

# `medevents publish`'s exit codes (its --help lists them).
EXIT_PROCESSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 3
EXIT_UNAVAILABLE = 4
EXIT_CODES = {
    EXIT_PROCESSED: "published; with --wait: the job was processed",
    EXIT_FAILED: "the job ended failed or failed_with_error (a cancelled job: failed, 499)",
    EXIT_USAGE: "usage or configuration: bad arguments or variables, an unreadable file",
    EXIT_TIMED_OUT: "--wait: the job had not ended (or no consumer had taken it) by --timeout",
    EXIT_UNAVAILABLE: "the broker or the API could not be used (unreachable, or a poll refused)",
}

UUID_TEXT = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def with_new_ids(
    submission: dict[str, Any], *, new_ids: bool = True, now: datetime | None = None
) -> dict[str, Any]:
    """`submission` renewed so that it can be sent again (`renewed`)."""
    return renewed([submission], new_ids=new_ids, now=now)[0]


def renewed(
    submissions: list[dict[str, Any]], *, new_ids: bool = True, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The submissions (one, or several sent together: a package and its cancel) renewed so
    that they can be sent again: the id of every entity they create (each `"id"` in `data`)
    replaced by a new UUID wherever it appears, consistently across them (references keep
    pointing at the same entity; references to other registries' records are left as they
    are), unless `new_ids` is false,
    and every date-time moved by whole days, so that the latest is yesterday (an encounter
    may not be in the future, nor older than ENCOUNTER_MAX_DAYS_PASSED). Unsigned
    `signed_data` (SIGNATURE_MODE=decode) is decoded, renewed and encoded again; signed data
    cannot be renewed and is left as it is."""
    renamed: dict[str, str] = {}
    contents = [_readable(submission) for submission in submissions]
    found = [_parse(m) for text in contents for m in re.findall(DATE_TIME_TEXT, text)]
    shift = timedelta(0)
    if found:
        today = (now or datetime.now(UTC)).date()
        shift = timedelta(days=(today - max(found).date()).days - 1)

    own = {
        found.lower() for text in contents for found in re.findall(f'"id":"({UUID_TEXT})"', text)
    }

    def rename(match: re.Match[str]) -> str:
        if not new_ids or match.group(0).lower() not in own:
            return match.group(0)
        return renamed.setdefault(match.group(0).lower(), str(uuid.uuid4()))

    def moved(match: re.Match[str]) -> str:
        return (_parse(match.group(0)) + shift).strftime("%Y-%m-%dT%H:%M:%SZ")

    result = []
    for submission, text in zip(submissions, contents, strict=True):
        text = re.sub(DATE_TIME_TEXT, moved, re.sub(UUID_TEXT, rename, text))
        result.append({**submission, "data": _signed_again(orjson.loads(text))})
    return result


DATE_TIME_TEXT = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
_UNSIGNED = "unsigned_content"


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _readable(submission: dict[str, Any]) -> str:
    """`data` as JSON text, with unsigned `signed_data` decoded in place."""
    data = dict(submission.get("data") or {})
    signed = data.get("signed_data")
    if isinstance(signed, str):
        try:
            data[_UNSIGNED] = decode_unsigned(signed)
            del data["signed_data"]
        except SignatureRejected:
            pass  # signed for real, or not decodable: left as it is
    return orjson.dumps(data).decode()


def _signed_again(data: dict[str, Any]) -> dict[str, Any]:
    if _UNSIGNED in data:
        content = data.pop(_UNSIGNED)
        data["signed_data"] = encode_unsigned(content)
    return data


def read_submission(path: Path) -> dict[str, Any] | None:
    try:
        submission = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"medevents publish: cannot read {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(submission, dict):
        print(f"medevents publish: {path} must hold a JSON object", file=sys.stderr)
        return None
    return submission


async def publish_submission(
    services: Services,
    submission: dict[str, Any],
    *,
    wait: bool,
    new_ids: bool,
    api_url: str,
    wait_seconds: float,
) -> int:
    settings = services.settings
    if wait and settings.auth_mode == "jwt" and settings.jwt_public_key is not None:
        # Before anything is published: waiting needs a token the API accepts, which a key
        # pair's public half cannot sign.
        print(
            "medevents publish: --wait signs its polls with JWT_SECRET; with JWT_PUBLIC_KEY "
            "set, publish without --wait and poll with a token of your issuer",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if isinstance(submission.get("data"), dict):
        # Dates always (an example's encounter must be recent), ids when asked to.
        submission = with_new_ids(submission, new_ids=new_ids)
    job_id = new_job_id()
    request_id = f"cli-{uuid.uuid4().hex[:16]}"
    async with services:
        try:
            await services.publisher.publish(submission, job_id, request_id)
        except BrokerUnavailable as exc:
            print(f"medevents publish: the broker is unavailable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    print(f"job {job_id}", flush=True)
    print(f"{api_url.rstrip('/')}{job_href(job_id)}", flush=True)
    if not wait:
        return EXIT_PROCESSED
    return await _wait_for(services.settings, submission, job_id, api_url, wait_seconds)


async def _wait_for(
    settings: Settings, submission: dict[str, Any], job_id: str, api_url: str, wait_seconds: float
) -> int:
    """Wait for the job as its client would (the Python client's long polls), with a token for
    the submission's client; print the final response."""
    requested_by = submission.get("requested_by") or {}
    client_id = str(requested_by.get("client_id", ""))
    token = mint_token(
        signing_secret(settings),
        client_id,
        ["job:read"],
        "medevents-cli",
        600,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    url = f"{api_url.rstrip('/')}{job_href(job_id)}"
    deadline = time.monotonic() + wait_seconds
    pause = 0.1
    async with AsyncClient(api_url, token) as client:
        while True:
            try:
                job = await client.wait(job_id, max(0.0, deadline - time.monotonic()))
            except (Unauthorized, Forbidden) as exc:  # waiting longer changes nothing
                print(
                    f"medevents publish: the API refused the poll ({exc.status}): "
                    f"{orjson.dumps(exc.body).decode()}",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            except ConnectionFailed as exc:
                print(f"medevents publish: cannot reach the API at {url}: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            except (NotFound, ServerError) as exc:
                # Published straight to the broker, the job exists once a consumer has taken
                # its message: until then it is not found.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(orjson.dumps(exc.body, option=orjson.OPT_INDENT_2).decode())
                    if isinstance(exc, NotFound):
                        print(
                            f"medevents publish: no consumer took the job in {wait_seconds:g} s",
                            file=sys.stderr,
                        )
                        return EXIT_TIMED_OUT
                    print(f"medevents publish: the API failed ({exc.status})", file=sys.stderr)
                    return EXIT_UNAVAILABLE
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, 2.0)
                continue
            except MedeventsError as exc:  # a 503 past the timeout, or an answer unforeseen
                print(orjson.dumps(exc.body, option=orjson.OPT_INDENT_2).decode())
                print(f"medevents publish: the API answered {exc.status}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            print(orjson.dumps(job.body, option=orjson.OPT_INDENT_2).decode())
            return exit_code(job, wait_seconds)


def exit_code(job: Job, wait_seconds: float) -> int:
    """What the job's end means for the exit code (`EXIT_CODES`), said on standard error
    unless processed."""
    if job.status is JobStatus.PROCESSED:
        return EXIT_PROCESSED
    if job.status is JobStatus.PENDING:
        print(f"medevents publish: still pending after {wait_seconds:g} s", file=sys.stderr)
        return EXIT_TIMED_OUT
    print(
        f"medevents publish: the job ended {job.status.value} ({job.status_code})",
        file=sys.stderr,
    )
    return EXIT_FAILED

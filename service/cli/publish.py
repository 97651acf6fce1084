"""`medevents publish FILE`: a producer that publishes a submission straight to RabbitMQ."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from service.api.auth import mint_token, signing_secret
from service.bootstrap import Services
from service.config import Settings
from service.domain.jobs import job_href, new_job_id
from service.messaging.broker import BrokerUnavailable

UUID_TEXT = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def with_new_ids(submission: dict[str, Any]) -> dict[str, Any]:
    """The submission with every entity id inside `data` replaced by a new UUID, consistently
    (references keep pointing at the same entity), so an example can be sent again."""
    text = orjson.dumps(submission["data"]).decode()
    renamed: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return renamed.setdefault(match.group(0).lower(), str(uuid.uuid4()))

    return {**submission, "data": orjson.loads(re.sub(UUID_TEXT, rename, text))}


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
    if new_ids and isinstance(submission.get("data"), dict):
        submission = with_new_ids(submission)
    job_id = new_job_id()
    request_id = f"cli-{uuid.uuid4().hex[:16]}"
    async with services:
        try:
            await services.publisher.publish(submission, job_id, request_id)
        except BrokerUnavailable as exc:
            print(f"medevents publish: the broker is unavailable: {exc}", file=sys.stderr)
            return 1
    print(f"job {job_id}")
    print(f"{api_url.rstrip('/')}{job_href(job_id)}")
    if not wait:
        return 0
    return await _wait_for(services.settings, submission, job_id, api_url, wait_seconds)


async def _wait_for(
    settings: Settings, submission: dict[str, Any], job_id: str, api_url: str, wait_seconds: float
) -> int:
    """Poll the job as its client would, with a token for the submission's client."""
    requested_by = submission.get("requested_by") or {}
    client_id = str(requested_by.get("client_id", ""))
    token = mint_token(signing_secret(settings), client_id, ["job:read"], "medevents-cli", 600)
    url = f"{api_url.rstrip('/')}{job_href(job_id)}"
    deadline = time.monotonic() + wait_seconds
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    status, body = response.status, await response.read()
            except aiohttp.ClientError as exc:
                print(f"medevents publish: cannot reach the API at {url}: {exc}", file=sys.stderr)
                return 1
            if status in (401, 403):  # waiting longer changes nothing
                print(
                    f"medevents publish: the API refused the poll ({status}): {body.decode()}",
                    file=sys.stderr,
                )
                return 1
            job_status = orjson.loads(body)["data"]["status"] if status in (200, 303) else None
            if job_status not in (None, "pending") or time.monotonic() > deadline:
                print(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode())
                return 0 if job_status not in (None, "pending") else 1
            await asyncio.sleep(0.2)

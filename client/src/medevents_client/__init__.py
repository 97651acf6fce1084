"""The Python client of the medevents asynchronous job API (docs/client.md).

`AsyncClient` (asyncio, aiohttp) and `Client` (blocking) have the same operations: `submit`,
`submit_encounter_package`, `get_job`, `wait`, `follow`, `list_jobs`, `cancel`.
"""

from __future__ import annotations

from ._version import __version__
from .aio import MAX_LONG_POLL_SECONDS, AsyncClient, JobPage
from .errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    MedeventsError,
    NotFound,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from .models import InvalidEntry, Job, JobError, JobStatus, Link, Rule
from .sync import Client

__all__ = [
    "MAX_LONG_POLL_SECONDS",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "InvalidEntry",
    "Job",
    "JobError",
    "JobPage",
    "JobStatus",
    "Link",
    "MedeventsError",
    "NotFound",
    "Rule",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationFailed",
    "__version__",
]

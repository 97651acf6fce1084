"""The service layer for jobs: what both entrypoints (HTTP, AMQP consumer) ask of a job."""

from __future__ import annotations

from typing import Any

from service.jobs import is_valid_job_id
from service.store import JobStore


class JobNotFound(Exception):
    """No such job for this client: it does not exist, or another client submitted it."""


class JobService:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def job_for_client(self, job_id: str, client_id: str) -> dict[str, Any]:
        """The job as its response needs it. An id that cannot be a job id is not looked up,
        so that nothing shaped like an operator or a path ever reaches the database."""
        if not is_valid_job_id(job_id):
            raise JobNotFound(job_id)
        job = await self.store.get_for_client(job_id, client_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

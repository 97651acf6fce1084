"""The dead letters, for operators: counted, and replayed (all, the oldest N, or those of some
jobs), by the dashboard's API and by `medevents dead-letters` alike."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

import structlog

from service.domain.jobs import job_id_of_message
from service.messaging.broker import BrokerUnavailable
from service.messaging.dead_letters import DeadLetters
from service.usecases.submissions import parse_body

# The operators' lines, wherever the operator asked from.
log = structlog.get_logger("medevents.operations")


class DeadLetterService:
    def __init__(self, dead_letters: DeadLetters) -> None:
        self._dead_letters = dead_letters

    async def count(self) -> int:
        """The dead letters now; `BrokerUnavailable` when the broker cannot be asked."""
        return await self._dead_letters.count()

    async def count_if_known(self) -> int | None:
        """The dead letters now; None when the broker cannot be asked."""
        try:
            return await self._dead_letters.count()
        except BrokerUnavailable as exc:
            log.warning("dead_letters_uncounted", error=str(exc))
            return None

    async def replay(self, job_ids: Collection[str] | None = None, limit: int | None = None) -> int:
        """Replay dead letters: all, the oldest `limit`, or those of `job_ids`."""
        select = None if job_ids is None else of_jobs(job_ids)
        replayed = await self._dead_letters.replay(limit, select)
        log.info("dead_letters_replayed", count=replayed, by_job_id=job_ids is not None)
        return replayed


class _Message(Protocol):
    message_id: str | None
    body: bytes
    timestamp: Any
    correlation_id: str | None


def of_jobs(job_ids: Collection[str]) -> Callable[[_Message], bool]:
    """Selects the dead letters of these jobs, by the job id the consumer gave each message
    (derived from its body when the producer set no `message_id`, as the consumer derives it),
    so that every dead letter the dashboard shows can be replayed by it."""
    wanted = set(job_ids)

    def select(message: _Message) -> bool:
        if message.message_id is not None:
            return message.message_id in wanted
        job_id = job_id_of_message(
            None,
            message.body,
            message.timestamp,
            message.correlation_id,
            body_is_object=parse_body(message.body).raw is not None,
        )
        return job_id in wanted

    return select

"""`episode.close`: close an active episode, with the day it ended and why."""

from __future__ import annotations

from consumers.processors.episode_checks import episode_of, managed_elsewhere
from schemas.episodes import EpisodeCloseRequestSchema, EpisodeParamsSchema
from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.entities import EPISODE
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


async def close_episode(context: JobContext) -> JobOutcome:
    episode = await episode_of(context)
    refused = JobOutcome.failed(
        409, "request_conflict", f"Episode in status {episode.get('status')} can not be closed"
    )
    if episode.get("status") != "active" and episode.get("changed_by_job") != context.job_id:
        return refused
    if (conflict := managed_elsewhere(context, episode)) is not None:
        return conflict
    request = context.data
    end, start = request["period"]["end"], (episode.get("period") or {}).get("start")
    if start is not None and end < start:  # ISO dates: their text sorts as they do
        entry = invalid_entry(
            ["period", "end"], invalid("End date must be greater or equal than start date")
        )
        return JobOutcome.validation_failed([entry])
    closed = {
        "status": "closed",
        "period": {**(episode.get("period") or {}), "end": end},
        "status_reason": request["status_reason"],
    }
    if "closing_summary" in request:
        closed["closing_summary"] = request["closing_summary"]
    if not await context.entities.change_episode(
        context.patient_id, episode["_id"], context.job_id, closed, from_statuses=("active",)
    ):
        return refused  # changed by another job since it was read
    href = entity_href(context.patient_id, EPISODE.collection, episode["_id"])
    return JobOutcome.processed([Link(EPISODE.entity, href)])


JOB_TYPE = JobType(
    name="episode.close",
    schema=EpisodeCloseRequestSchema(),
    params=EpisodeParamsSchema(),
    handler=close_episode,
    required_scope="episode:write",
    http=HttpSubmission(
        "PATCH",
        "/api/patients/{patient_id}/episodes/{episode_id}/actions/close",
        "Close an episode",
        names=("episode_id", EPISODE),
    ),
)

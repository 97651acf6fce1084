"""`episode.cancel`: mark an episode entered in error, once none of its encounters stands."""

from __future__ import annotations

from consumers.processors.episode_checks import episode_of, managed_elsewhere
from schemas.episodes import EpisodeCancelRequestSchema, EpisodeParamsSchema
from service.domain.entities import ENCOUNTER, ENTERED_IN_ERROR, EPISODE
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType

CANCELLABLE = ("active", "closed")


async def cancel_episode(context: JobContext) -> JobOutcome:
    episode = await episode_of(context)
    status = episode.get("status")
    refused = JobOutcome.failed(
        409, "request_conflict", f"Episode in status {status} can not be canceled"
    )
    if status not in CANCELLABLE and episode.get("changed_by_job") != context.job_id:
        return refused
    if (conflict := managed_elsewhere(context, episode)) is not None:
        return conflict
    if await context.entities.standing_in_episode(ENCOUNTER, context.patient_id, episode["_id"]):
        return JobOutcome.failed(
            409,
            "request_conflict",
            "Episode can not be canceled while it has not canceled encounters",
        )
    request = context.data
    cancelled = {
        "status": ENTERED_IN_ERROR,
        "status_reason": request["status_reason"],
    }
    if "explanatory_letter" in request:
        cancelled["explanatory_letter"] = request["explanatory_letter"]
    if not await context.entities.change_episode(
        context.patient_id, episode["_id"], context.job_id, cancelled, from_statuses=CANCELLABLE
    ):
        return refused  # cancelled by another job since it was read
    href = entity_href(context.patient_id, EPISODE.collection, episode["_id"])
    return JobOutcome.processed([Link(EPISODE.entity, href)])


JOB_TYPE = JobType(
    name="episode.cancel",
    schema=EpisodeCancelRequestSchema(),
    params=EpisodeParamsSchema(),
    handler=cancel_episode,
    required_scope="episode:write",
    http=HttpSubmission(
        "PATCH",
        "/api/patients/{patient_id}/episodes/{episode_id}/actions/cancel",
        "Cancel an episode entered in error",
        names=("episode_id", EPISODE),
    ),
)

"""`episode.update`: rename an active episode, or give it another care manager."""

from __future__ import annotations

from consumers.processors.episode_checks import (
    care_manager_entries,
    episode_of,
    managing_organization_entries,
)
from schemas.episodes import EpisodeParamsSchema, EpisodeUpdateRequestSchema
from service.domain.entities import EPISODE
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


async def update_episode(context: JobContext) -> JobOutcome:
    episode = await episode_of(context)
    refused = JobOutcome.failed(
        409, "request_conflict", f"Episode in status {episode.get('status')} can not be updated"
    )
    if episode.get("status") != "active" and episode.get("changed_by_job") != context.job_id:
        return refused
    changes = context.data
    # The stored managing organization is checked again, as the original's changeset does.
    broken = await managing_organization_entries(context, episode.get("managing_organization"))
    if "care_manager" in changes:
        broken += await care_manager_entries(context, changes["care_manager"])
    if broken:
        return JobOutcome.validation_failed(broken)
    if not await context.entities.change_episode(
        context.patient_id, episode["_id"], context.job_id, dict(changes), from_statuses=("active",)
    ):
        return refused  # closed or cancelled since it was read
    href = entity_href(context.patient_id, EPISODE.collection, episode["_id"])
    return JobOutcome.processed([Link(EPISODE.entity, href)])


JOB_TYPE = JobType(
    name="episode.update",
    schema=EpisodeUpdateRequestSchema(),
    params=EpisodeParamsSchema(),
    handler=update_episode,
    required_scope="episode:write",
    http=HttpSubmission(
        "PATCH",
        "/api/patients/{patient_id}/episodes/{episode_id}",
        "Update an episode",
        names=("episode_id", EPISODE),
    ),
)

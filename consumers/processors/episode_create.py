"""`episode.create`: open an episode of care for the patient, managed by the client's legal
entity, with an approved doctor of it as care manager."""

from __future__ import annotations

from consumers.processors.episode_checks import care_manager_entries, managing_organization_entries
from schemas.episodes import EpisodeCreateRequestSchema
from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.entities import EPISODE, entity_document
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


async def create_episode(context: JobContext) -> JobOutcome:
    episode = context.data
    broken = [
        *await managing_organization_entries(context, episode["managing_organization"]),
        *await care_manager_entries(context, episode["care_manager"]),
    ]
    if broken:
        return JobOutcome.validation_failed(broken)
    document = entity_document(episode, patient_id=context.patient_id, job=context.job)
    if await context.entities.insert(EPISODE, [document], context.job_id):
        entry = invalid_entry(["id"], invalid("Episode with such id already exists"))
        return JobOutcome.validation_failed([entry])
    href = entity_href(context.patient_id, EPISODE.collection, episode["id"])
    return JobOutcome.processed([Link(EPISODE.entity, href)])


JOB_TYPE = JobType(
    name="episode.create",
    schema=EpisodeCreateRequestSchema(),
    handler=create_episode,
    required_scope="episode:write",
    http=HttpSubmission("POST", "/api/patients/{patient_id}/episodes", "Open an episode"),
)

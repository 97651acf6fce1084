"""`encounter_package.cancel`: mark an encounter, and everything recorded with it, as
entered in error. Only the client that submitted the encounter may cancel it."""

from __future__ import annotations

from schemas.encounter_package import EncounterCancelSchema
from service.domain.entities import ENCOUNTER
from service.domain.jobs import JobOutcome, JobStatus, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


async def cancel_encounter_package(context: JobContext) -> JobOutcome:
    encounter_id = context.data["encounter_id"]
    encounter = await context.entities.get(ENCOUNTER, context.patient_id, encounter_id)
    if encounter is None:
        return JobOutcome.failed(404, "not_found", "Encounter not found")
    if encounter.get("client_id") != context.requested_by["client_id"]:
        return JobOutcome.failed(
            403, "forbidden", "Only the client that submitted the encounter may cancel it"
        )
    creator = await context.jobs.get(encounter.get("job_id", ""))
    if creator is not None and creator["status"] == JobStatus.PENDING:
        # Its package is still being written: cancelling now would miss what comes after.
        return JobOutcome.failed(
            409, "request_conflict", "The encounter's package is still being processed"
        )
    covered = await context.entities.cancel_encounter(
        context.patient_id,
        encounter_id,
        context.job_id,
        context.data.get("reason"),
        take_over_from=await _abandoned_cancel(context, encounter),
    )
    if covered is None:
        return JobOutcome.failed(409, "request_conflict", "Encounter is already cancelled")
    return JobOutcome.processed(
        [
            Link(kind.entity, entity_href(context.patient_id, kind.collection, entity_id))
            for kind, entity_id in covered
        ]
    )


async def _abandoned_cancel(context: JobContext, encounter: dict) -> str | None:
    """The id of an earlier cancel of this encounter that failed half-way (500): this one
    may take its work over and complete it."""
    earlier_id = encounter.get("cancelled_by_job")
    if not earlier_id or earlier_id == context.job_id:
        return None
    earlier = await context.jobs.get(earlier_id)
    if earlier is not None and earlier["status"] == JobStatus.FAILED_WITH_ERROR:
        return earlier_id
    return None


JOB_TYPE = JobType(
    name="encounter_package.cancel",
    schema=EncounterCancelSchema(),
    handler=cancel_encounter_package,
    required_scope="encounter:write",
    http=HttpSubmission(
        "PATCH", "/api/patients/{patient_id}/encounter_package", "Cancel a submitted encounter"
    ),
)

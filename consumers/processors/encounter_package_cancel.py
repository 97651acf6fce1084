"""`encounter_package.cancel`: mark an encounter, and everything recorded with it, as
entered in error. Only the client that submitted the encounter may cancel it."""

from __future__ import annotations

from consumers.registry import JobContext, JobType
from schemas.encounter_package import ENCOUNTER, EncounterCancelSchema
from service.jobs import JobOutcome, Link, entity_href


async def cancel_encounter_package(context: JobContext) -> JobOutcome:
    encounter_id = context.data["encounter_id"]
    encounter = await context.entities.get(ENCOUNTER, context.patient_id, encounter_id)
    if encounter is None:
        return JobOutcome.failed(404, "not_found", "Encounter not found")
    if encounter.get("client_id") != context.requested_by["client_id"]:
        return JobOutcome.failed(
            403, "forbidden", "Only the client that submitted the encounter may cancel it"
        )
    covered = await context.entities.cancel_encounter(
        context.patient_id, encounter_id, context.job_id, context.data.get("reason")
    )
    if covered is None:
        return JobOutcome.failed(409, "request_conflict", "Encounter is already cancelled")
    return JobOutcome.processed(
        [
            Link(kind.entity, entity_href(context.patient_id, kind.collection, entity_id))
            for kind, entity_id in covered
        ]
    )


JOB_TYPE = JobType(
    name="encounter_package.cancel",
    schema=EncounterCancelSchema(),
    handler=cancel_encounter_package,
    required_scope="encounter:write",
)

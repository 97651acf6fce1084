"""`encounter_package.create`: store an encounter and everything recorded with it."""

from __future__ import annotations

from schemas.encounter_package import EncounterPackageSchema
from service.domain.entities import (
    ENCOUNTER,
    ENCOUNTER_ENTITY_KINDS,
    EntityKind,
    entity_document,
)
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobType


def _already_exists(kind: EntityKind, entity_id: str) -> JobOutcome:
    return JobOutcome.failed(
        409, "request_conflict", f"{kind.title} with id '{entity_id}' already exists"
    )


async def create_encounter_package(context: JobContext) -> JobOutcome:
    patient_id, job_id = context.patient_id, context.job_id

    def documents(entities: list[dict]) -> list[dict]:
        return [entity_document(e, patient_id=patient_id, job=context.job) for e in entities]

    # The encounter first: it is the package's root, so two packages for one encounter
    # conflict here, before either wrote anything else.
    encounter = documents([context.data["encounter"]])
    if taken := await context.entities.insert(ENCOUNTER, encounter, job_id):
        return _already_exists(ENCOUNTER, taken[0])
    links = [
        Link(ENCOUNTER.entity, entity_href(patient_id, ENCOUNTER.collection, encounter[0]["_id"]))
    ]

    for kind in ENCOUNTER_ENTITY_KINDS:
        written = documents(context.data.get(kind.package_key) or [])
        if taken := await context.entities.insert(kind, written, job_id):
            # Leave nothing of a package that cannot be stored whole.
            await context.entities.remove_written_by(job_id)
            return _already_exists(kind, taken[0])
        links.extend(
            Link(kind.entity, entity_href(patient_id, kind.collection, document["_id"]))
            for document in written
        )
    return JobOutcome.processed(links)


JOB_TYPE = JobType(
    name="encounter_package.create",
    schema=EncounterPackageSchema(),
    handler=create_encounter_package,
    required_scope="encounter:write",
    http=HttpSubmission(
        "POST", "/api/patients/{patient_id}/encounter_package", "Submit an encounter package"
    ),
)

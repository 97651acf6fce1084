"""`encounter_package.cancel`: the MIS signs its package again, with what it cancels marked
`entered_in_error`, and those entities are marked so.

The request is eHealth's: `{"signed_data"}`, its content the package as created plus the
encounter's `cancellation_reason` and `explanatory_letter` (`schemas.package_content`). As
the original's cancel (`apps/core/lib/core/patients/encounters/cancel.ex`): the signature and
the schema (422), the `oneOf` rules (422), the signer (409), the encounter (404) and its
episode (404), the episode's managing organization (422), then the conflicts (409): nothing to
cancel, something cancelled already, content that is not what was created, a cancelled
condition still a diagnosis of a live encounter.
"""

from __future__ import annotations

from typing import Any

from consumers.processors.package_cancels import (
    Entity,
    Stored,
    apply_cancel,
    conflict,
    content_conflict,
    take_back_marks,
)
from consumers.processors.package_checks import signer_conflict
from consumers.processors.package_model import entities_of, ref
from schemas.encounter_package import PackageCancelRequestSchema
from schemas.one_of import PACKAGE_ONE_OF, check_one_of
from schemas.package_content import PACKAGE_CANCEL_CONTENT
from schemas.rules import invalid
from schemas.validation import single_entry
from service.domain.entities import (
    ALL_ENTITY_KINDS,
    CONDITION,
    ENCOUNTER,
    ENCOUNTER_ENTITY_KINDS,
    ENTERED_IN_ERROR,
    EntityKind,
)
from service.domain.jobs import JobOutcome, JobStatus
from service.usecases.job_types import HttpSubmission, JobContext, JobType
from service.usecases.signed_content import read_signed_content


async def cancel_encounter_package(context: JobContext) -> JobOutcome:
    raw, content, signer = await read_signed_content(context, PACKAGE_CANCEL_CONTENT)
    if broken := check_one_of(raw, PACKAGE_ONE_OF):
        return JobOutcome.validation_failed(broken)
    submitted = content["encounter"]
    if signer is not None:
        performer_id = ref(submitted.get("performer")) or ""
        performer = (await context.registries.employees([performer_id])).get(performer_id)
        user_id = context.requested_by["user_id"]
        if problem := signer_conflict(signer, performer, context.client_id, user_id):
            return conflict(problem)

    encounter = await context.entities.get(ENCOUNTER, context.patient_id, submitted["id"])
    if encounter is None:
        return JobOutcome.failed(404, "not_found", "Encounter not found")
    creator = await context.jobs.get(encounter.get("job_id", ""))
    if creator is not None and creator["status"] == JobStatus.PENDING:
        # Its package is still being written: cancelling now would miss what comes after.
        return conflict("The encounter's package is still being processed")
    episode_id = ref(encounter.get("episode")) or ""
    episode = (await context.entities.found("episodes", [episode_id], context.patient_id)).get(
        episode_id
    )
    if episode is None:
        return JobOutcome.failed(404, "not_found", "Encounter's episode not found")
    if problem := await _organization_problem(context, episode):
        path = ["managing_organization", "identifier", "value"]
        return JobOutcome.validation_failed(single_entry(path, invalid(problem)))

    stored = await _stored_entities(context, content, submitted["id"])
    marks = [
        (kind, entity["id"])
        for kind in ALL_ENTITY_KINDS
        for entity in entities_of(content, kind)
        if entity.get(kind.status_field) == ENTERED_IN_ERROR
    ]
    if not marks:
        return conflict('At least one entity should have status "entered_in_error"')
    for kind, entity_id in marks:
        document = stored.get((kind, entity_id))
        if (
            document is not None
            and document.get(kind.status_field) == ENTERED_IN_ERROR
            and document.get("cancelled_by_job") != context.job_id  # not a delivery before
        ):
            return conflict(f"Invalid transition for {kind.entity} - already entered_in_error")
    if refused := content_conflict(_entities(content), stored):
        return refused
    if _cancels_a_diagnosis(content, marks):
        return conflict("The condition can not be canceled while encounter is not canceled")

    return await apply_cancel(context, (ENCOUNTER, submitted), marks, stored)


async def _organization_problem(context: JobContext, episode: dict[str, Any]) -> str | None:
    organization = ref(episode.get("managing_organization")) or ""
    legal_entity = await context.registries.legal_entity(organization)
    if legal_entity is None:
        return "LegalEntity with such ID is not found"
    if legal_entity.get("status") != "ACTIVE":
        return "LegalEntity is not active"
    if organization != context.client_id:
        return "Managing_organization does not correspond to user's legal_entity"
    return None


async def _stored_entities(
    context: JobContext, content: dict[str, Any], encounter_id: str
) -> Stored:
    """The stored entities of the encounter that the package names, by kind and id."""
    stored: Stored = {}
    for kind in ALL_ENTITY_KINDS:
        ids = [entity["id"] for entity in entities_of(content, kind)]
        found = await context.entities.found(kind.collection, ids, context.patient_id)
        for entity_id, document in found.items():
            if kind is ENCOUNTER or document.get("encounter_id") == encounter_id:
                stored[(kind, entity_id)] = document
    return stored


def _entities(content: dict[str, Any]) -> list[Entity]:
    """The encounter, then each entity of the package, with where the content has it."""
    entities: list[Entity] = [(ENCOUNTER, "encounter", content["encounter"])]
    for kind in ENCOUNTER_ENTITY_KINDS:
        for index, entity in enumerate(entities_of(content, kind)):
            entities.append((kind, f"{kind.package_key}.{index}", entity))
    return entities


def _cancels_a_diagnosis(content: dict[str, Any], marks: list[tuple[EntityKind, str]]) -> bool:
    """A condition cancelled while its encounter, which names it as a diagnosis, is not."""
    if (ENCOUNTER, content["encounter"]["id"]) in marks:
        return False
    cancelled = {entity_id for kind, entity_id in marks if kind is CONDITION}
    diagnoses = {ref(d.get("condition")) for d in content["encounter"].get("diagnoses") or []}
    return bool(cancelled & diagnoses)


JOB_TYPE = JobType(
    name="encounter_package.cancel",
    schema=PackageCancelRequestSchema(),
    handler=cancel_encounter_package,
    required_scope="encounter:write",
    signed_content=PACKAGE_CANCEL_CONTENT,
    undo=take_back_marks,
    http=HttpSubmission(
        "PATCH", "/api/patients/{patient_id}/encounter_package", "Cancel a submitted encounter"
    ),
)

"""`encounter_package.create`: an MIS's signed encounter package, checked and stored.

The request is eHealth's: `{"visit", "signed_data"}` (`schemas.encounter_package`). In order,
as the original's package create: the signature and the content's schema (422), the `oneOf`
rules (422), the signer against the encounter's performer (409, when signatures are
verified), then every business rule at once (422, `package_checks`). The encounter, its
visit and every entity are then written, each with the job that wrote it; the encounter also
records who signed the package.
"""

from __future__ import annotations

from typing import Any

from consumers.processors.package_checks import check_package, signer_conflict
from consumers.processors.package_facts import gather_facts
from consumers.processors.package_model import PackageFacts, entities_of, iter_links, ref
from consumers.processors.package_writes import leave_nothing_of, write_package
from schemas.encounter_package import PackageCreateRequestSchema
from schemas.one_of import PACKAGE_ONE_OF, check_one_of
from schemas.package_content import PACKAGE_CREATE_CONTENT
from service.domain.clock import utcnow
from service.domain.entities import (
    ENCOUNTER,
    ENCOUNTER_ENTITY_KINDS,
    VISIT,
    EntityKind,
    entity_document,
)
from service.domain.jobs import JobOutcome, Link, entity_href
from service.signatures import Signer
from service.usecases.job_types import HttpSubmission, JobContext, JobType
from service.usecases.signed_content import read_signed_content


async def create_encounter_package(context: JobContext) -> JobOutcome:
    raw, content, signer = await read_signed_content(context, PACKAGE_CREATE_CONTENT)
    if broken := check_one_of(raw, PACKAGE_ONE_OF):
        return JobOutcome.validation_failed(broken)
    visit = context.data.get("visit")

    facts = await gather_facts(context, content, visit)
    if (refused := _refusal(context, content, visit, facts, signer)) is not None:
        return refused

    await _write(context, content, visit, signer)
    return JobOutcome.processed(
        [
            Link(kind.entity, entity_href(context.patient_id, kind.collection, entity_id))
            for kind, entity_id in iter_links(content)
        ]
    )


def _refusal(
    context: JobContext,
    content: dict[str, Any],
    visit: dict[str, Any] | None,
    facts: PackageFacts,
    signer: Signer | None,
) -> JobOutcome | None:
    """The signer's conflict (409) or the broken business rules (422); None when neither."""
    performer = facts.employees.get(ref(content["encounter"]["performer"]) or "")
    user_id = context.requested_by["user_id"]
    # A performer not found is the business rules' 422, as the original's.
    if performer is not None and (
        conflict := signer_conflict(signer, performer, context.client_id, user_id)
    ):
        return JobOutcome.failed(409, "request_conflict", conflict)
    if broken := check_package(content, visit, facts, client_id=context.client_id, now=utcnow()):
        return JobOutcome.validation_failed(broken)
    return None


async def _write(
    context: JobContext,
    content: dict[str, Any],
    visit: dict[str, Any] | None,
    signer: Signer | None,
) -> None:
    """The encounter (the package's root), its visit and every entity (`write_package`)."""
    patient_id, job = context.patient_id, context.job
    encounter = content["encounter"]

    def document(entity: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**entity_document(entity, patient_id=patient_id, job=job), **extra}

    signed_by = signer.to_document() if signer is not None else None
    # Kept beside what the client sent, for the reads' filters (`encounter_id`, `episode_id`).
    episode_id = ref(encounter["episode"])
    written = [(ENCOUNTER, [document(encounter, signed_by=signed_by, episode_id=episode_id)])]
    if visit is not None:
        written.append((VISIT, [document(visit)]))
    for kind in ENCOUNTER_ENTITY_KINDS:
        written.append(
            (
                kind,
                [
                    document(entity, encounter_id=encounter["id"], episode_id=episode_id)
                    for entity in entities_of(content, kind)
                ],
            )
        )
    await write_package(context, written, _path_of, such_id=(ENCOUNTER, VISIT))


def _path_of(kind: EntityKind, index: int) -> list[str | int]:
    return [kind.package_key] if kind in (ENCOUNTER, VISIT) else [kind.package_key, index]


JOB_TYPE = JobType(
    name="encounter_package.create",
    schema=PackageCreateRequestSchema(),
    handler=create_encounter_package,
    required_scope="encounter:write",
    signed_content=PACKAGE_CREATE_CONTENT,
    undo=leave_nothing_of(ENCOUNTER),
    http=HttpSubmission(
        "POST", "/api/patients/{patient_id}/encounter_package", "Submit an encounter package"
    ),
)

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

from consumers.processors.package_checks import (
    PackageFacts,
    check_package,
    entities_of,
    gather_facts,
    iter_links,
    ref,
    signer_conflict,
)
from schemas.encounter_package import PackageCreateRequestSchema
from schemas.one_of import PACKAGE_ONE_OF, check_one_of
from schemas.package_content import PACKAGE_CREATE_CONTENT
from schemas.rules import Rule, invalid
from schemas.validation import invalid_entry
from service.domain.clock import utcnow
from service.domain.entities import (
    ENCOUNTER,
    ENCOUNTER_ENTITY_KINDS,
    VISIT,
    EntityKind,
    entity_document,
)
from service.domain.jobs import JobOutcome, JobStatus, Link, entity_href
from service.signatures import Signer
from service.usecases.job_types import HttpSubmission, JobContext, JobFailed, JobType
from service.usecases.signed_content import read_signed_content


async def create_encounter_package(context: JobContext) -> JobOutcome:
    try:
        outcome = await _create(context)
    except JobFailed as failed:
        outcome = failed.outcome
    if outcome.status is not JobStatus.PROCESSED and await context.entities.wrote_any(
        ENCOUNTER, context.job_id
    ):
        # Delivered again after a crash half-way, and refused now (what held then does not
        # any more: a certificate expired since, an employee dismissed, a date now too old):
        # nothing of a package that is not stored whole stays. The encounter is written
        # first, so without it this job wrote nothing.
        await context.entities.remove_written_by(context.job_id)
    return outcome


async def _create(context: JobContext) -> JobOutcome:
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
    if conflict := signer_conflict(signer, performer, context.client_id, user_id):
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
    """Every document of the package, each with this job's id; a delivery again after a crash
    finds its own and goes on. Ids another job wrote are the original's 422 ("... already
    exists"), all of them at once, and nothing of this package stays. The encounter first: it
    is the package's root, so two packages for one encounter conflict there, before either
    wrote anything else."""
    patient_id, job = context.patient_id, context.job
    encounter = content["encounter"]

    def document(entity: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**entity_document(entity, patient_id=patient_id, job=job), **extra}

    signed_by = signer.to_document() if signer is not None else None
    written = [(ENCOUNTER, [document(encounter, signed_by=signed_by)])]
    if visit is not None:
        written.append((VISIT, [document(visit)]))
    for kind in ENCOUNTER_ENTITY_KINDS:
        entities = entities_of(content, kind)
        written.append((kind, [document(e, encounter_id=encounter["id"]) for e in entities]))
    taken: list[dict[str, Any]] = []
    for kind, documents in written:
        taken.extend(
            invalid_entry(*_taken(content, kind, entity_id))
            for entity_id in await context.entities.insert(kind, documents, context.job_id)
        )
        if taken and kind is ENCOUNTER:
            break  # another package's encounter: nothing of this one is written
    if taken:
        await context.entities.remove_written_by(context.job_id)
        raise JobFailed(JobOutcome.validation_failed(taken))


def _taken(content: dict[str, Any], kind: EntityKind, entity_id: str) -> tuple[list, Rule]:
    """Where an id taken by another job is, and the original's words for it."""
    if kind is VISIT:
        return ["visit", "id"], invalid("Visit with such id already exists")
    if kind is ENCOUNTER:
        return ["encounter", "id"], invalid("Encounter with such id already exists")
    ids = [entity["id"] for entity in entities_of(content, kind)]
    return [kind.package_key, ids.index(entity_id), "id"], invalid(
        f"{kind.title} with id '{entity_id}' already exists"
    )


JOB_TYPE = JobType(
    name="encounter_package.create",
    schema=PackageCreateRequestSchema(),
    handler=create_encounter_package,
    required_scope="encounter:write",
    signed_content=PACKAGE_CREATE_CONTENT,
    http=HttpSubmission(
        "POST", "/api/patients/{patient_id}/encounter_package", "Submit an encounter package"
    ),
)

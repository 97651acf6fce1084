"""`diagnostic_report_package.cancel`: the MIS signs its diagnostic report package again, with
what it cancels marked `entered_in_error`, and those entities are marked so.

The request is eHealth's: `{"signed_data"}`, its content the package as created plus the
report's `cancellation_reason` and `explanatory_letter` (`schemas.diagnostic_report_package`).
As the original's cancel (`apps/core/lib/core/patients/diagnostic_reports/consumer.ex` and
`cancel.ex`): the signature and the schema (422), the `oneOf` rules (422), the signer (409),
the report (404), then the conflicts (409): nothing to cancel, an entity of the package
cancelled already, content that is not what was created. The report keeps why it was
cancelled.

Ours, not the original's: the signer is checked against the report's `recorded_by` (the
original reads an encounter's performer, which this package does not have); a cancel while the
report's package is still being written is a 409; and the processed job links the entities it
marked, where the original answers no links at all.
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
from consumers.processors.package_model import ref
from schemas.diagnostic_report_package import (
    DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT,
    DIAGNOSTIC_REPORT_PACKAGE_ONE_OF,
    DiagnosticReportPackageCancelRequestSchema,
)
from schemas.one_of import check_one_of
from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.entities import DIAGNOSTIC_REPORT, ENTERED_IN_ERROR, OBSERVATION
from service.domain.jobs import JobOutcome, JobStatus
from service.usecases.job_types import HttpSubmission, JobContext, JobType
from service.usecases.signed_content import read_signed_content


async def cancel_diagnostic_report_package(context: JobContext) -> JobOutcome:
    raw, content, signer = await read_signed_content(
        context, DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT
    )
    if broken := check_one_of(raw, DIAGNOSTIC_REPORT_PACKAGE_ONE_OF):
        return JobOutcome.validation_failed(broken)
    submitted = content["diagnostic_report"]
    if signer is not None:
        employee_id = ref(submitted.get("recorded_by")) or ""
        employee = (await context.registries.employees([employee_id])).get(employee_id)
        user_id = context.requested_by["user_id"]
        if problem := signer_conflict(signer, employee, context.client_id, user_id):
            return conflict(problem)

    report = await context.entities.get(DIAGNOSTIC_REPORT, context.patient_id, submitted["id"])
    if report is None or report.get("encounter_id") is not None:
        # A report of an encounter package is cancelled with its package.
        return JobOutcome.failed(404, "not_found", "Diagnostic report not found")
    if report.get("client_id") != context.client_id:
        # Only the legal entity that recorded it, in every signature mode.
        entry = invalid_entry(
            ["managing_organization", "identifier", "value"],
            invalid("Managing_organization does not correspond to user's legal_entity"),
        )
        return JobOutcome.validation_failed([entry])
    creator = await context.jobs.get(report.get("job_id", ""))
    if creator is not None and creator["status"] == JobStatus.PENDING:
        # Its package is still being written: cancelling now would miss what comes after.
        return conflict("The diagnostic report's package is still being processed")

    entities = _entities(content)
    stored = await _stored_entities(context, content, report)
    marks = [
        (kind, entity["id"])
        for kind, _, entity in entities
        if entity.get(kind.status_field) == ENTERED_IN_ERROR
    ]
    if not marks:
        return conflict('At least one entity should have status "entered_in_error"')
    # The original refuses a package any of whose stored entities is cancelled already, the
    # report first (not only those this cancel marks).
    for kind, _, entity in entities:
        document = stored.get((kind, entity["id"]))
        if (
            document is not None
            and document.get(kind.status_field) == ENTERED_IN_ERROR
            and document.get("cancelled_by_job") != context.job_id  # not a delivery before
        ):
            return conflict(f"Invalid transition for {kind.entity} - already entered_in_error")
    if refused := content_conflict(entities, stored):
        return refused
    return await apply_cancel(context, (DIAGNOSTIC_REPORT, submitted), marks, stored)


def _entities(content: dict[str, Any]) -> list[Entity]:
    """The report, then each observation, with where the content has it."""
    entities: list[Entity] = [
        (DIAGNOSTIC_REPORT, "diagnostic_report", content["diagnostic_report"])
    ]
    for index, observation in enumerate(content.get("observations") or []):
        entities.append((OBSERVATION, f"observations.{index}", observation))
    return entities


async def _stored_entities(
    context: JobContext, content: dict[str, Any], report: dict[str, Any]
) -> Stored:
    """The stored report and those of its observations the package names, by kind and id (an
    observation of another report is not the package's, as the original reads them by their
    report)."""
    stored = {(DIAGNOSTIC_REPORT, report["_id"]): report}
    ids = [observation["id"] for observation in content.get("observations") or []]
    found = await context.entities.found(OBSERVATION.collection, ids, context.patient_id)
    for entity_id, document in found.items():
        if document.get("diagnostic_report_id") == report["_id"]:
            stored[(OBSERVATION, entity_id)] = document
    return stored


JOB_TYPE = JobType(
    name="diagnostic_report_package.cancel",
    schema=DiagnosticReportPackageCancelRequestSchema(),
    handler=cancel_diagnostic_report_package,
    required_scope="diagnostic_report:write",
    signed_content=DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT,
    undo=take_back_marks,
    http=HttpSubmission(
        "PATCH",
        "/api/patients/{patient_id}/diagnostic_report_package",
        "Cancel a submitted diagnostic report package",
    ),
)

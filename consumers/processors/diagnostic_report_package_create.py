"""`diagnostic_report_package.create`: an MIS's signed diagnostic report, with the observations
it reports, checked and stored.

The request is eHealth's: `{"signed_data"}` (`schemas.diagnostic_report_package`). In order, as
the original's consumer (`apps/core/lib/core/patients/diagnostic_reports/consumer.ex`): the
signature and the content's schema (422), the `oneOf` rules (422), the signer against the
report's `recorded_by` (409, when signatures are verified), then every business rule at once
(422): the observations' (`Observation.diagnostic_report_package_changeset`), then the
report's (`DiagnosticReport.diagnostic_report_package_changeset`). The report is then written,
with who signed it, and its observations, each with the job that wrote it and the report's id
(`diagnostic_report_id`); ids another job wrote are the original's 422s.

Not checked, as in the encounter package: what the original asks of eHealth's services
registry (the report's code a service, the results interpreter and the conclusion of a
diagnostic procedure or an imaging), and how old an `issued` may be.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from consumers.processors.package_checks import (
    Path,
    RuleReport,
    check_diagnostic_report,
    check_source_employee,
    signer_conflict,
)
from consumers.processors.package_model import PackageFacts, ref
from consumers.processors.package_writes import leave_nothing_of, write_package
from schemas.diagnostic_report_package import (
    DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT,
    DIAGNOSTIC_REPORT_PACKAGE_ONE_OF,
    DiagnosticReportPackageCreateRequestSchema,
)
from schemas.one_of import check_one_of
from schemas.rules import Rule
from schemas.validation import invalid_entry
from service.domain.clock import utcnow
from service.domain.entities import DIAGNOSTIC_REPORT, OBSERVATION, EntityKind, entity_document
from service.domain.jobs import JobOutcome, Link, entity_href
from service.signatures import Signer
from service.usecases.job_types import HttpSubmission, JobContext, JobType
from service.usecases.signed_content import read_signed_content

_VALUE = ["identifier", "value"]
# What the original does not keep of an observation of this package (its consumer drops it).
_NOT_STORED = ("reaction_on",)


async def create_diagnostic_report_package(context: JobContext) -> JobOutcome:
    raw, content, signer = await read_signed_content(
        context, DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT
    )
    if broken := check_one_of(raw, DIAGNOSTIC_REPORT_PACKAGE_ONE_OF):
        return JobOutcome.validation_failed(broken)

    facts = await gather_facts(context, content)
    if (refused := _refusal(context, content, facts, signer)) is not None:
        return refused

    await _write(context, content, signer)
    return JobOutcome.processed(
        [
            Link(kind.entity, entity_href(context.patient_id, kind.collection, entity_id))
            for kind, entity_id in iter_links(content)
        ]
    )


def iter_links(content: dict[str, Any]) -> Iterator[tuple[EntityKind, str]]:
    """The report, then each of its observations: the order of a processed job's links."""
    yield DIAGNOSTIC_REPORT, content["diagnostic_report"]["id"]
    for observation in content.get("observations") or []:
        yield OBSERVATION, observation["id"]


# --- The facts ----------------------------------------------------------------------------------


def _employee_refs(content: dict[str, Any]) -> set[str]:
    report = content["diagnostic_report"]
    found = {ref(report.get("recorded_by"))}
    for name in ("performer", "results_interpreter"):
        found.add(ref((report.get(name) or {}).get("reference")))
    found.update(ref(o.get("performer")) for o in content.get("observations") or [])
    return {value for value in found if value}


async def gather_facts(context: JobContext, content: dict[str, Any]) -> PackageFacts:
    """The employees, the managing organization and the service request the package refers
    to, in a few queries."""
    report = content["diagnostic_report"]
    facts = PackageFacts()
    facts.employees = await context.registries.employees(_employee_refs(content))
    if organization := ref(report.get("managing_organization")):
        legal_entity = await context.registries.legal_entity(organization)
        if legal_entity is not None:
            facts.legal_entities[organization] = legal_entity
    based_on = ref(report.get("based_on"))
    requests = {based_on} if based_on is not None else set()
    facts.service_requests = await context.entities.found(
        "service_requests", requests, context.patient_id
    )
    return facts


# --- The checks ---------------------------------------------------------------------------------


def _refusal(
    context: JobContext, content: dict[str, Any], facts: PackageFacts, signer: Signer | None
) -> JobOutcome | None:
    """The signer's conflict (409) or the broken business rules (422); None when neither."""
    recorded_by = facts.employees.get(ref(content["diagnostic_report"]["recorded_by"]) or "")
    user_id = context.requested_by["user_id"]
    # An employee not found is the business rules' 422, as the original's.
    if recorded_by is not None and (
        conflict := signer_conflict(signer, recorded_by, context.client_id, user_id)
    ):
        return JobOutcome.failed(409, "request_conflict", conflict)
    if broken := check_diagnostic_report_package(
        content, facts, client_id=context.client_id, now=utcnow()
    ):
        return JobOutcome.validation_failed(broken)
    return None


def check_diagnostic_report_package(
    content: dict[str, Any], facts: PackageFacts, *, client_id: str, now: datetime
) -> list[dict[str, Any]]:
    """Every business rule the package breaks, as `invalid` entries (empty: none): the
    observations' first, then the report's, as the original checks them."""
    report = RuleReport()
    diagnostic_report = content["diagnostic_report"]
    observations = content.get("observations") or []
    ids = [observation["id"] for observation in observations]
    if len(set(ids)) != len(ids):
        report.add(["observations"], "All primary keys must be unique")
    for index, observation in enumerate(observations):
        _check_observation(report, observation, ["observations", index], diagnostic_report["id"])
        performer = ref(observation.get("performer"))
        if performer:
            path: Path = ["observations", index, "performer", *_VALUE]
            check_source_employee(report, path, performer, facts, client_id)
        if observation["issued"] > now:
            report.add(["observations", index, "issued"], "Issued must be in past")

    at = ["diagnostic_report"]
    check_diagnostic_report(report, diagnostic_report, at, facts, client_id, now)
    issued = _instant(diagnostic_report["issued"])
    if issued is None:
        # Its format ("dateTime") is unknown to the schema's validator, so any string passes
        # the schema; the original's changeset casts it to a date-time, and refuses it so.
        report.entries.append(
            invalid_entry([*at, "issued"], Rule("cast", "is invalid", ["utc_datetime"]))
        )
    elif issued > now:
        report.add([*at, "issued"], "Issued must be in past")
    return report.entries


def _check_observation(
    report: RuleReport, observation: dict[str, Any], at: list[str | int], report_id: str
) -> None:
    if ref(observation["diagnostic_report"]) != report_id:
        report.add(
            [*at, "diagnostic_report", *_VALUE],
            "Submitted diagnostic report is not allowed for the observation",
        )
    # `primary_source` is true in this package (its schema's enum): the performer is its source.
    if "performer" not in observation:
        report.add(
            [*at, "performer"], "performer must be present if primary_source is true", "required"
        )


def _instant(text: str) -> datetime | None:
    """A report's `issued`, as the original casts it to a UTC date-time; None if it is none."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return aware.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# --- The writes ---------------------------------------------------------------------------------


async def _write(context: JobContext, content: dict[str, Any], signer: Signer | None) -> None:
    """The report (the package's root), then its observations (`write_package`)."""
    patient_id, job = context.patient_id, context.job
    diagnostic_report = content["diagnostic_report"]

    def document(entity: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {**entity_document(entity, patient_id=patient_id, job=job), **extra}

    signed_by = signer.to_document() if signer is not None else None
    observations = [
        document(
            {name: value for name, value in observation.items() if name not in _NOT_STORED},
            diagnostic_report_id=diagnostic_report["id"],
        )
        for observation in content.get("observations") or []
    ]
    written = [
        (DIAGNOSTIC_REPORT, [document(diagnostic_report, signed_by=signed_by)]),
        (OBSERVATION, observations),
    ]
    await write_package(context, written, _path)


def _path(kind: EntityKind, index: int) -> list[str | int]:
    return ["diagnostic_report"] if kind is DIAGNOSTIC_REPORT else ["observations", index]


JOB_TYPE = JobType(
    name="diagnostic_report_package.create",
    schema=DiagnosticReportPackageCreateRequestSchema(),
    handler=create_diagnostic_report_package,
    required_scope="diagnostic_report:write",
    signed_content=DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT,
    undo=leave_nothing_of(DIAGNOSTIC_REPORT),
    http=HttpSubmission(
        "POST",
        "/api/patients/{patient_id}/diagnostic_report_package",
        "Submit a diagnostic report package",
    ),
)

"""`service_request.create`: an MIS's signed service request (a referral), checked and stored
`active`.

In order, as the original's consumer (`apps/core/lib/core/jobs/service_request_create_job.ex`
and `ServiceRequest.create_changeset`): the signature and the content's schema (422), the
occurrence's `oneOf` (422), the signer against the requester employee (409, when signatures are
verified), then every business rule at once (422): the requester an approved doctor of the
client's legal entity, the requester legal entity the client, the context the patient's
encounter, the references of its reasons and supporting information the patient's, no
permitted resources for a laboratory request, `authored_on` in the past.

The signed content has no id: the service request's is derived from the job's, so that a
delivery again finds its own. Not done as the original: the requisition number, the
expiration date, the code checked against the registry's services.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from consumers.processors.package_checks import RuleReport, check_source_employee, signer_conflict
from consumers.processors.package_model import PackageFacts, ref, ref_type
from consumers.processors.package_writes import leave_nothing_of
from schemas.one_of import check_one_of
from schemas.rules import invalid
from schemas.service_requests import (
    SERVICE_REQUEST_CREATE_CONTENT,
    SERVICE_REQUEST_ONE_OF,
    ServiceRequestCreateRequestSchema,
)
from schemas.validation import invalid_entry
from service.domain.clock import utcnow
from service.domain.entities import (
    CONDITION,
    DIAGNOSTIC_REPORT,
    ENCOUNTER,
    ENTERED_IN_ERROR,
    EPISODE,
    OBSERVATION,
    SERVICE_REQUEST,
    entity_document,
)
from service.domain.jobs import JobOutcome, Link, entity_href
from service.usecases.job_types import HttpSubmission, JobContext, JobFailed, JobType
from service.usecases.signed_content import read_signed_content

_VALUE = ["identifier", "value"]
# Where the ids of service requests come from: one per job.
_NAMESPACE = uuid.UUID("6a0c1f0e-2b8d-4f55-9d61-3c2e7b5a9f10")
_LABORATORY = "laboratory"
# The kinds a reference of the content may name, by its type's code.
_KINDS = {
    "observation": OBSERVATION,
    "condition": CONDITION,
    "diagnostic_report": DIAGNOSTIC_REPORT,
    "episode_of_care": EPISODE,
}


def service_request_id(job_id: str) -> str:
    """The id of the service request job `job_id` creates."""
    return str(uuid.uuid5(_NAMESPACE, f"service_request/{job_id}"))


async def create_service_request(context: JobContext) -> JobOutcome:
    raw, content, signer = await read_signed_content(context, SERVICE_REQUEST_CREATE_CONTENT)
    if broken := check_one_of(raw, SERVICE_REQUEST_ONE_OF):
        return JobOutcome.validation_failed(broken)

    facts = await gather_facts(context, content)
    requester = facts.employees.get(ref(content["requester_employee"]) or "")
    user_id = context.requested_by["user_id"]
    if requester is not None and (
        conflict := signer_conflict(signer, requester, context.client_id, user_id)
    ):
        return JobOutcome.failed(409, "request_conflict", conflict)
    if broken := check_service_request(content, facts, client_id=context.client_id, now=utcnow()):
        return JobOutcome.validation_failed(broken)

    entity_id = service_request_id(context.job_id)
    encounter = facts.stored["encounters"][ref(content["context"]) or ""]
    now = utcnow()
    document = entity_document(
        {**content, "id": entity_id}, patient_id=context.patient_id, job=context.job
    )
    document.update(
        episode_id=encounter.get("episode_id"),
        signed_by=signer.to_document() if signer is not None else None,
        status_history=[{"status": "active", "inserted_at": now}],
    )
    if await context.entities.insert(SERVICE_REQUEST, [document], context.job_id):
        entries = [
            invalid_entry(["id"], invalid(f"Service request with id '{entity_id}' already exists"))
        ]
        raise JobFailed(JobOutcome.validation_failed(entries))
    href = entity_href(context.patient_id, SERVICE_REQUEST.collection, entity_id)
    return JobOutcome.processed([Link(SERVICE_REQUEST.entity, href)])


# --- The facts ----------------------------------------------------------------------------------


def _references(content: dict[str, Any]) -> list[tuple[list[str | int], dict[str, Any]]]:
    """Each reference of the content to a medical entity, with its path."""
    found = []
    for name in ("reason_reference", "supporting_info", "permitted_resources"):
        for index, item in enumerate(content.get(name) or []):
            found.append(([name, index, *_VALUE], item))
    return found


async def gather_facts(context: JobContext, content: dict[str, Any]) -> PackageFacts:
    """The requester, the context encounter and what the references name, a query a kind."""
    facts = PackageFacts()
    facts.employees = await context.registries.employees({ref(content["requester_employee"]) or ""})
    wanted: dict[str, set[str]] = {ENCOUNTER.collection: {ref(content["context"]) or ""}}
    for _, item in _references(content):
        kind = _KINDS.get(ref_type(item) or "")
        if kind is not None:
            wanted.setdefault(kind.collection, set()).add(ref(item) or "")
    for collection, ids in wanted.items():
        facts.stored[collection] = await context.entities.found(collection, ids, context.patient_id)
    return facts


# --- The checks ---------------------------------------------------------------------------------


def check_service_request(
    content: dict[str, Any], facts: PackageFacts, *, client_id: str, now: datetime
) -> list[dict[str, Any]]:
    """Every business rule the service request breaks, as `invalid` entries (empty: none)."""
    report = RuleReport()
    requester = ref(content["requester_employee"]) or ""
    check_source_employee(report, ["requester_employee", *_VALUE], requester, facts, client_id)
    if ref(content["requester_legal_entity"]) != client_id:
        report.add(["requester_legal_entity", *_VALUE], "Must be current legal enity")
    if (ref(content["context"]) or "") not in facts.stored.get(ENCOUNTER.collection, {}):
        report.add(["context", *_VALUE], "Encounter with such ID is not found")
    for path, item in _references(content):
        _check_reference(report, path, item, facts)
    categories = {c.get("code") for c in content["category"].get("coding") or []}
    if content.get("permitted_resources") and _LABORATORY in categories:
        report.add(
            ["permitted_resources"],
            "Permitted resources are not allowed for laboratory category of service request",
        )
    if content["authored_on"] > now:
        report.add(["authored_on"], "Authored on must be in past")
    return report.entries


def _check_reference(
    report: RuleReport, path: list[str | int], item: dict[str, Any], facts: PackageFacts
) -> None:
    kind = _KINDS.get(ref_type(item) or "")
    if kind is None:
        return  # the schema allows no other
    stored = facts.stored.get(kind.collection, {}).get(ref(item) or "")
    title = "Episode" if kind is EPISODE else kind.title
    if stored is None:
        report.add(path, f"{title} with such ID is not found")
    elif kind is EPISODE and stored.get("status") != "active":
        report.add(path, "Episode is not active")
    elif stored.get(kind.status_field) == ENTERED_IN_ERROR:
        report.add(path, f'{title} in "entered_in_error" status can not be referenced')


JOB_TYPE = JobType(
    name="service_request.create",
    schema=ServiceRequestCreateRequestSchema(),
    handler=create_service_request,
    required_scope="service_request:write",
    signed_content=SERVICE_REQUEST_CREATE_CONTENT,
    undo=leave_nothing_of(SERVICE_REQUEST),
    http=HttpSubmission(
        "POST", "/api/patients/{patient_id}/service_requests", "Create a service request"
    ),
)

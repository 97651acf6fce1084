"""What the episode job types check alike: the legal entity that manages an episode and its
care manager, in the original's words (422 entries at their paths), and reading the episode a
request names."""

from __future__ import annotations

from typing import Any

from consumers.processors.package_model import ref
from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.entities import EPISODE
from service.domain.jobs import JobOutcome
from service.usecases.job_types import JobContext, JobFailed

CARE_MANAGER = ["care_manager", "identifier", "value"]
MANAGING_ORGANIZATION = ["managing_organization", "identifier", "value"]


async def care_manager_entries(context: JobContext, care_manager: Any) -> list[dict[str, Any]]:
    """The care manager: an approved doctor of the client's legal entity."""
    employee_id = ref(care_manager) or ""
    employee = (await context.registries.employees([employee_id])).get(employee_id)
    if employee is None:
        problem = "Employee with such ID is not found"
    elif employee.get("employee_type") != "DOCTOR":
        problem = "Employee submitted as a care_manager is not a doctor"
    elif employee.get("status") != "APPROVED":
        problem = "Doctor submitted as a care_manager is not active"
    elif employee.get("legal_entity_id") != context.client_id:
        problem = f"Employee {employee_id} doesn't belong to your legal entity"
    else:
        return []
    return [invalid_entry(CARE_MANAGER, invalid(problem))]


async def managing_organization_entries(
    context: JobContext, organization: Any
) -> list[dict[str, Any]]:
    """The managing organization: the client's own legal entity, active."""
    legal_entity_id = ref(organization) or ""
    legal_entity = await context.registries.legal_entity(legal_entity_id)
    if legal_entity is None:
        problem = "LegalEntity with such ID is not found"
    elif legal_entity.get("status") != "ACTIVE":
        problem = "LegalEntity is not active"
    elif legal_entity_id != context.client_id:
        problem = "Managing_organization does not correspond to user's legal_entity"
    else:
        return []
    return [invalid_entry(MANAGING_ORGANIZATION, invalid(problem))]


async def episode_of(context: JobContext) -> dict[str, Any]:
    """The episode of the request's path; `JobFailed` with the original's 404 when the
    patient has none of that id."""
    episode_id = context.params["episode_id"]
    found = await context.entities.found(EPISODE.collection, [episode_id], context.patient_id)
    if episode_id not in found:
        raise JobFailed(JobOutcome.failed(404, "not_found", "Failed to get episode"))
    return found[episode_id]


def managed_elsewhere(context: JobContext, episode: dict[str, Any]) -> JobOutcome | None:
    """A close or cancel of an episode another legal entity manages: the original's 409."""
    if ref(episode.get("managing_organization")) == context.client_id:
        return None
    return JobOutcome.failed(
        409, "request_conflict", "Managing_organization does not correspond to user's legal_entity"
    )

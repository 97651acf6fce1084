"""What the episode job types check alike: the legal entity that manages an episode and its
care manager, in the original's words (422 entries at their paths), and reading the episode a
request names."""

from __future__ import annotations

from datetime import date
from typing import Any

from consumers.processors.package_model import ref
from schemas.rules import invalid
from schemas.validation import invalid_entry
from service.domain.clock import utcnow
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
    """The episode of the request's path, managed by the client's legal entity; `JobFailed`
    with 404 when the patient has none of that id, 422 when another legal entity manages
    it."""
    episode_id = context.params["episode_id"]
    episode = (
        await context.entities.found(EPISODE.collection, [episode_id], context.patient_id)
    ).get(episode_id)
    if episode is None:
        raise JobFailed(JobOutcome.failed(404, "not_found", "Episode not found"))
    if ref(episode.get("managing_organization")) != context.client_id:
        entry = invalid_entry(
            MANAGING_ORGANIZATION,
            invalid("Managing_organization does not correspond to user's legal_entity"),
        )
        raise JobFailed(JobOutcome.validation_failed([entry]))
    return episode


def not_in_future(day: str | None) -> bool:
    """Whether an ISO date (`2026-01-15`) is today or before, in UTC."""
    return day is None or date.fromisoformat(day) <= utcnow().date()

"""The first step of a package's checks: every record the package refers to (employees, the
division, the episode, the visit, stored entities, service requests), read in a few
queries."""

from __future__ import annotations

from typing import Any

from consumers.processors.package_model import (
    SOURCE_EMPLOYEE,
    PackageFacts,
    ref,
    ref_type,
)
from service.usecases.job_types import JobContext


def _employee_refs(content: dict[str, Any]) -> set[str]:
    found: set[str | None] = {ref(content["encounter"].get("performer"))}
    for key, name in SOURCE_EMPLOYEE.items():
        found.update(ref(entity.get(name)) for entity in content.get(key) or [])
    for report in content.get("diagnostic_reports") or []:
        found.add(ref(report.get("recorded_by")))
        for name in ("performer", "results_interpreter"):
            found.add(ref((report.get(name) or {}).get("reference")))
    return {value for value in found if value}


def _referenced(content: dict[str, Any]) -> dict[str, set[str]]:
    """The stored entities of the patient a package may refer to, per collection: what it
    refers to and does not hold itself."""
    wanted: dict[str, set[str | None]] = {
        "conditions": set(),
        "observations": set(),
        "diagnostic_reports": set(),
        "immunizations": set(),
    }
    encounter = content["encounter"]
    for diagnosis in encounter.get("diagnoses") or []:
        wanted["conditions"].add(ref(diagnosis.get("condition")))
    for info in encounter.get("supporting_info") or []:
        kind = ref_type(info)
        if kind in ("observation", "diagnostic_report"):
            wanted[f"{kind}s"].add(ref(info))
    for condition in content.get("conditions") or []:
        for evidence in condition.get("evidences") or []:
            wanted["observations"].update(ref(d) for d in evidence.get("details") or [])
    for observation in content.get("observations") or []:
        wanted["immunizations"].add(ref(observation.get("reaction_on")))
    return {
        key: {v for v in values if v} - {e.get("id") for e in content.get(key) or []}
        for key, values in wanted.items()
    }


def _service_request_refs(content: dict[str, Any]) -> set[str]:
    found: set[str | None] = {ref(content["encounter"].get("incoming_referral"))}
    for observation in content.get("observations") or []:
        found.update(ref(item) for item in observation.get("based_on") or [])
    for report in content.get("diagnostic_reports") or []:
        found.add(ref(report.get("based_on")))
    return {value for value in found if value}


async def gather_facts(
    context: JobContext, content: dict[str, Any], visit: dict[str, Any] | None
) -> PackageFacts:
    entities, registries = context.entities, context.registries
    encounter = content["encounter"]
    facts = PackageFacts()
    facts.employees = await registries.employees(_employee_refs(content))
    if division_id := ref(encounter.get("division")):
        facts.division = await registries.division(division_id)
    if episode_id := ref(encounter.get("episode")):
        facts.episode = (await entities.found("episodes", [episode_id], context.patient_id)).get(
            episode_id
        )
    organizations = {
        organization
        for report in content.get("diagnostic_reports") or []
        if (organization := ref(report.get("managing_organization"))) is not None
    }
    for organization in organizations:
        if (legal_entity := await registries.legal_entity(organization)) is not None:
            facts.legal_entities[organization] = legal_entity
    visit_ref = ref(encounter.get("visit"))
    if visit_ref and (visit is None or visit_ref != visit["id"]):
        facts.stored_visit = (await entities.found("visits", [visit_ref], context.patient_id)).get(
            visit_ref
        )
    for collection, ids in _referenced(content).items():
        facts.stored[collection] = await entities.found(collection, ids, context.patient_id)
    facts.service_requests = await entities.found(
        "service_requests", _service_request_refs(content), context.patient_id
    )
    return facts

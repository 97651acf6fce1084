"""The business rules of an encounter package create, as eHealth's medical events service
checks them after the schema (`apps/core/lib/core/patients/patients.ex`, `encounters/
validations.ex`, the changesets of `Core.Encounter`, `Core.Condition`, `Core.Observation`,
the validators under `apps/core/lib/core/validators/`).

Two steps, so that the rules themselves are pure and tested without a database:
`package_facts.gather_facts` reads every record the package refers to; `check_package` here
applies the rules to the package and those facts and returns every broken one as an `invalid`
entry (rule `invalid`, or `required`), all at once. The signer's checks (409) are
`signer_conflict`. Ids that exist already are found by the writes themselves
(`encounter_package_create`): a duplicate key costs nothing more, where looking first would
cost a query per kind on every package.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.processors.package_model import (
    SOURCE_EMPLOYEE,
    PackageFacts,
    ref,
    ref_type,
)
from schemas.rules import Rule, invalid
from schemas.validation import invalid_entry
from service.domain.entities import (
    CONDITION,
    DIAGNOSTIC_REPORT,
    ENCOUNTER_ENTITY_KINDS,
    ENTERED_IN_ERROR,
    IMMUNIZATION,
    OBSERVATION,
    EntityKind,
)
from service.signatures import Signer

# How old an encounter's date may be (the original's ENCOUNTER_MAX_DAYS_PASSED).
ENCOUNTER_MAX_DAYS_PASSED = 7

Path = Sequence[str | int]


# The date each kind must have in the past, with the original's message.
_PAST_DATES = {
    "conditions": ("onset_date", "Onset date must be in past"),
    "observations": ("issued", "Issued must be in past"),
    "immunizations": ("date", "Date must be in past"),
    "allergy_intolerances": ("onset_date_time", "Onset date time must be in past"),
    "risk_assessments": ("asserted_date", "Asserted date must be in past"),
    "devices": ("asserted_date", "Asserted date must be in past"),
    "medication_statements": ("asserted_date", "Asserted date must be in past"),
    "medication_administrations": ("effective_date_time", "Effective date time must be in past"),
    "procedures": ("performed_date_time", "Performed date time must be in past"),
}


class RuleReport:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, path: Path, description: str, rule: str = "invalid") -> None:
        self.entries.append(
            invalid_entry(
                path, Rule(rule, description) if rule != "invalid" else invalid(description)
            )
        )


def check_package(
    content: dict[str, Any],
    visit: dict[str, Any] | None,
    facts: PackageFacts,
    *,
    client_id: str,
    now: datetime,
    max_days_passed: int = ENCOUNTER_MAX_DAYS_PASSED,
) -> list[dict[str, Any]]:
    """Every business rule the package breaks, as `invalid` entries (empty: none)."""
    report = RuleReport()
    if visit is not None:
        _check_visit(report, visit, facts, now)
    _check_encounter(report, content, visit, facts, client_id, now, max_days_passed)
    encounter_id = content["encounter"]["id"]
    for kind in ENCOUNTER_ENTITY_KINDS:
        _check_entities(report, content, kind, encounter_id, facts, client_id, now)
    return report.entries


def _check_visit(
    report: RuleReport, visit: dict[str, Any], facts: PackageFacts, now: datetime
) -> None:
    period = visit["period"]
    if period["start"] > now:
        report.add(["visit", "period", "start"], "Start date must be in past")
    if period["end"] > now:
        report.add(["visit", "period", "end"], "End date must be in past")
    if period["end"] < period["start"]:
        report.add(
            ["visit", "period", "end"], "End date must be greater than or equal the start date"
        )


def _check_doctor(
    report: RuleReport, path: Path, employee_id: str, facts: PackageFacts, client_id: str
) -> None:
    """The encounter's performer: an approved doctor of the client's legal entity."""
    employee = facts.employees.get(employee_id)
    if employee is None:
        report.add(path, "Employee with such ID is not found")
    elif employee.get("employee_type") != "DOCTOR":
        report.add(path, "Employee submitted as a care_manager is not a doctor")
    elif employee.get("status") != "APPROVED":
        report.add(path, "Doctor submitted as a care_manager is not active")
    elif employee.get("legal_entity_id") != client_id:
        report.add(path, f"Employee {employee_id} doesn't belong to your legal entity")


def check_source_employee(
    report: RuleReport, path: Path, employee_id: str, facts: PackageFacts, client_id: str
) -> None:
    """An asserter or performer of an entity (the original's `Core.Source`)."""
    employee = facts.employees.get(employee_id)
    if employee is None:
        report.add(path, "Employee with such ID is not found")
    elif employee.get("employee_type") != "DOCTOR" or employee.get("status") != "APPROVED":
        report.add(path, "Employee is not an active doctor")
    elif employee.get("legal_entity_id") != client_id:
        report.add(path, f"Employee {employee_id} doesn't belong to your legal entity")


_VALUE = ["identifier", "value"]


def _check_encounter(
    report: RuleReport,
    content: dict[str, Any],
    visit: dict[str, Any] | None,
    facts: PackageFacts,
    client_id: str,
    now: datetime,
    max_days_passed: int,
) -> None:
    encounter = content["encounter"]
    at: Path = ["encounter"]
    _check_doctor(
        report, [*at, "performer", *_VALUE], ref(encounter["performer"]) or "", facts, client_id
    )

    if "division" in encounter:
        path = [*at, "division", *_VALUE]
        if facts.division is None:
            report.add(path, "Division with such ID is not found")
        elif facts.division.get("status") != "ACTIVE":
            report.add(path, "Division is not active")
        elif facts.division.get("legal_entity_id") != client_id:
            report.add(path, "User is not allowed to create encouners for this division")

    episode_path = [*at, "episode", *_VALUE]
    if facts.episode is None:
        report.add(episode_path, "Episode with such ID is not found")
    elif facts.episode.get("status") != "active":
        report.add(episode_path, "Episode is not active")
    elif ref(facts.episode.get("managing_organization")) != client_id:
        report.add(episode_path, "Managing_organization does not correspond to user's legal_entity")

    visit_ref = ref(encounter["visit"])
    if (visit is None or visit_ref != visit["id"]) and facts.stored_visit is None:
        report.add([*at, "visit", *_VALUE], "Visit with such ID is not found")

    package_conditions = {c["id"] for c in content.get("conditions") or []}
    stored_conditions = facts.stored.get("conditions", {})
    for index, diagnosis in enumerate(encounter["diagnoses"]):
        condition_id = ref(diagnosis["condition"])
        if condition_id not in package_conditions and condition_id not in stored_conditions:
            path = [*at, "diagnoses", index, "condition", *_VALUE]
            report.add(path, "Condition with such id is not found")
    roles = [_codes(diagnosis.get("role")) for diagnosis in encounter["diagnoses"]]
    if not any("primary" in codes for codes in roles):
        report.add([*at, "diagnoses"], "Encounter must have at least one chief complaint")

    if referral := encounter.get("incoming_referral"):
        _check_service_request(report, [*at, "incoming_referral", *_VALUE], ref(referral), facts)

    for index, info in enumerate(encounter.get("supporting_info") or []):
        kind = ref_type(info)
        if kind not in ("observation", "diagnostic_report"):
            continue  # the schema allows no other
        stored = facts.stored.get(f"{kind}s", {}).get(ref(info) or "")
        path = [*at, "supporting_info", index, *_VALUE]
        title = "Observation" if kind == "observation" else "Diagnostic report"
        if stored is None:
            report.add(path, f"{title} with such id is not found")
        elif stored.get("status") == ENTERED_IN_ERROR:
            report.add(path, f'{title} in "entered_in_error" status can not be referenced')

    date = encounter["date"]
    if date > now:
        report.add([*at, "date"], "Date must be in past")
    else:
        earliest = (now - timedelta(days=max_days_passed)).date()
        if date.astimezone(UTC).date() <= earliest:
            report.add([*at, "date"], f"Date must be greater than {earliest.isoformat()}")


def _check_service_request(
    report: RuleReport, path: Path, request_id: str | None, facts: PackageFacts
) -> None:
    request = facts.service_requests.get(request_id or "")
    if request is None:
        report.add(path, "Service request with such id is not found")
    elif request.get("status") not in ("active", "in_progress"):
        report.add(path, "Service request is not active or in progress")


def _codes(concept: Any) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return {code for c in codings if isinstance(code := c.get("code"), str)}


def _check_entities(
    report: RuleReport,
    content: dict[str, Any],
    kind: EntityKind,
    encounter_id: str,
    facts: PackageFacts,
    client_id: str,
    now: datetime,
) -> None:
    key = kind.package_key
    entities = content.get(key) or []
    ids = [entity["id"] for entity in entities]
    if len(set(ids)) != len(ids):
        report.add([key], "All primary keys must be unique")
    for index, entity in enumerate(entities):
        at: Path = [key, index]
        context_field = "encounter" if kind is DIAGNOSTIC_REPORT else "context"
        if ref(entity.get(context_field)) != encounter_id:
            report.add(
                [*at, context_field, *_VALUE],
                f"Submitted context is not allowed for the {kind.entity.replace('_', ' ')}",
            )
        if source := SOURCE_EMPLOYEE.get(key):
            if entity.get("primary_source") and source not in entity:
                report.add(
                    [*at, source], f"{source} must be present if primary_source is true", "required"
                )
            elif entity.get("primary_source") is False and "report_origin" not in entity:
                report.add(
                    [*at, "report_origin"],
                    "report_origin must be present if primary_source is false",
                    "required",
                )
            if employee_id := ref(entity.get(source)):
                check_source_employee(report, [*at, source, *_VALUE], employee_id, facts, client_id)
        if dated := _PAST_DATES.get(key):
            name, message = dated
            if isinstance(entity.get(name), datetime) and entity[name] > now:
                report.add([*at, name], message)
        if kind is CONDITION:
            _check_evidences(report, content, entity, at, facts)
        elif kind is OBSERVATION:
            _check_observation(report, content, entity, at, facts)
        elif kind is DIAGNOSTIC_REPORT:
            check_diagnostic_report(report, entity, at, facts, client_id, now)


def _check_evidences(
    report: RuleReport,
    content: dict[str, Any],
    condition: dict[str, Any],
    at: Path,
    facts: PackageFacts,
) -> None:
    in_package = {o["id"] for o in content.get("observations") or []}
    stored = facts.stored.get("observations", {})
    for e, evidence in enumerate(condition.get("evidences") or []):
        for d, detail in enumerate(evidence.get("details") or []):
            observation_id = ref(detail) or ""
            path = [*at, "evidences", e, "details", d, *_VALUE]
            if observation_id in in_package:
                continue
            if observation_id not in stored:
                report.add(path, "Observation with such id is not found")
            elif stored[observation_id].get("status") == ENTERED_IN_ERROR:
                report.add(path, 'Observation in "entered_in_error" status can not be referenced')


def _check_observation(
    report: RuleReport,
    content: dict[str, Any],
    observation: dict[str, Any],
    at: Path,
    facts: PackageFacts,
) -> None:
    if "diagnostic_report" in observation:
        reports = {r["id"] for r in content.get("diagnostic_reports") or []}
        if ref(observation["diagnostic_report"]) not in reports:
            report.add([*at, "diagnostic_report", *_VALUE], "Invalid reference")
    if "reaction_on" in observation:
        immunization_id = ref(observation["reaction_on"]) or ""
        in_package = {i["id"] for i in content.get("immunizations") or []}
        if immunization_id not in in_package and immunization_id not in facts.stored.get(
            IMMUNIZATION.collection, {}
        ):
            report.add([*at, "reaction_on", *_VALUE], "Immunization with such id is not found")
    for b, based_on in enumerate(observation.get("based_on") or []):
        _check_service_request(report, [*at, "based_on", b, *_VALUE], ref(based_on), facts)


def check_diagnostic_report(
    report: RuleReport,
    diagnostic_report: dict[str, Any],
    at: Path,
    facts: PackageFacts,
    client_id: str,
    now: datetime,
) -> None:
    recorded_by = ref(diagnostic_report.get("recorded_by")) or ""
    check_source_employee(report, [*at, "recorded_by", *_VALUE], recorded_by, facts, client_id)
    for name in ("performer", "results_interpreter"):
        employee_id = ref((diagnostic_report.get(name) or {}).get("reference"))
        if employee_id:
            path = [*at, name, "reference", *_VALUE]
            check_source_employee(report, path, employee_id, facts, client_id)
    organization = diagnostic_report.get("managing_organization")
    if diagnostic_report.get("primary_source") and organization is None:
        report.add(
            [*at, "managing_organization"],
            "managing_organization must be present if primary_source is true",
            "required",
        )
    elif organization is not None:
        path = [*at, "managing_organization", *_VALUE]
        legal_entity = facts.legal_entities.get(ref(organization) or "")
        if legal_entity is None:
            report.add(path, "LegalEntity with such ID is not found")
        elif legal_entity.get("status") != "ACTIVE":
            report.add(path, "LegalEntity is not active")
        elif ref(organization) != client_id:
            report.add(path, "Managing_organization does not correspond to user's legal_entity")
    if not diagnostic_report.get("primary_source") and not (
        "report_origin" in diagnostic_report
        or (diagnostic_report.get("performer") or {}).get("text")
    ):
        report.add(at, "report_origin or performer with type text must be filled")
    if "based_on" in diagnostic_report:
        _check_service_request(
            report, [*at, "based_on", *_VALUE], ref(diagnostic_report["based_on"]), facts
        )


def signer_conflict(
    signer: Signer | None, performer: dict[str, Any] | None, client_id: str, user_id: str
) -> str | None:
    """Why the signer may not submit a package performed by `performer` (a 409), or None.
    Checked only when the signature is verified, as the original checks it only with its
    signature service on."""
    if signer is None:
        return None
    if not signer.tax_id:
        return "Invalid drfo"
    if performer is None:
        return "Employee is not performer of encounter"  # nobody the signer could be
    tax_id = (performer.get("party") or {}).get("tax_id")
    if not isinstance(tax_id, str) or _drfo(tax_id) != _drfo(signer.tax_id):
        return "Does not match the signer drfo"
    if performer.get("legal_entity_id") != client_id:
        return "Performer does not belong to current legal entity"
    if user_id not in (performer.get("user_ids") or []):
        return "Employee is not performer of encounter"
    return None


def _drfo(text: str) -> str:
    return "".join(text.split()).upper()

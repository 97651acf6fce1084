"""The kinds of medical entities a job stores: an encounter and what is recorded with it.

Each kind names itself in a job's links (`entity`), its MongoDB collection and the path of
its reads (`collection`), and its list in an encounter package (`package_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.domain.clock import utcnow

# The status of an entity cancelled (a property of its own kind: `EntityKind.status_field`).
ENTERED_IN_ERROR = "entered_in_error"


@dataclass(frozen=True, slots=True)
class EntityKind:
    entity: str
    collection: str
    package_key: str
    # The property that says "entered in error" when the entity is cancelled.
    status_field: str = "status"

    @property
    def title(self) -> str:
        """`medication_statement` as `Medication statement`, for messages."""
        return self.entity.replace("_", " ").capitalize()


ENCOUNTER = EntityKind("encounter", "encounters", "encounter")
CONDITION = EntityKind("condition", "conditions", "conditions", "verification_status")
OBSERVATION = EntityKind("observation", "observations", "observations")
ALLERGY_INTOLERANCE = EntityKind(
    "allergy_intolerance", "allergy_intolerances", "allergy_intolerances", "verification_status"
)
IMMUNIZATION = EntityKind("immunization", "immunizations", "immunizations")
RISK_ASSESSMENT = EntityKind("risk_assessment", "risk_assessments", "risk_assessments")
DEVICE = EntityKind("device", "devices", "devices")
MEDICATION_STATEMENT = EntityKind(
    "medication_statement", "medication_statements", "medication_statements"
)
MEDICATION_ADMINISTRATION = EntityKind(
    "medication_administration", "medication_administrations", "medication_administrations"
)
DIAGNOSTIC_REPORT = EntityKind("diagnostic_report", "diagnostic_reports", "diagnostic_reports")
PROCEDURE = EntityKind("procedure", "procedures", "procedures")

# What an encounter package holds besides its encounter, in the order of a processed job's
# links (eHealth's medical events service lists them in this order too).
ENCOUNTER_ENTITY_KINDS = (
    CONDITION,
    OBSERVATION,
    ALLERGY_INTOLERANCE,
    IMMUNIZATION,
    RISK_ASSESSMENT,
    DEVICE,
    MEDICATION_STATEMENT,
    MEDICATION_ADMINISTRATION,
    DIAGNOSTIC_REPORT,
    PROCEDURE,
)
ALL_ENTITY_KINDS = (ENCOUNTER, *ENCOUNTER_ENTITY_KINDS)
# The visit a package's encounter happened in: written with the package, not read on its own.
VISIT = EntityKind("visit", "visits", "visit")
# An episode of care: the encounters of one health problem. Written by its own job types.
EPISODE = EntityKind("episode", "episodes", "episodes")
# A referral for a service: written by its own job types.
SERVICE_REQUEST = EntityKind("service_request", "service_requests", "service_requests")
# What a patient's reads serve: the entities of packages, episodes and service requests.
READABLE_KINDS = (*ALL_ENTITY_KINDS, EPISODE, SERVICE_REQUEST)
KINDS_BY_COLLECTION = {kind.collection: kind for kind in READABLE_KINDS}


def entity_document(
    entity: dict[str, Any], *, patient_id: str, job: dict[str, Any]
) -> dict[str, Any]:
    """An entity as stored: its fields, `_id` for its id, and who wrote it, when and how."""
    now = utcnow()
    document = {key: value for key, value in entity.items() if key != "id"}
    document.update(
        _id=entity["id"],
        patient_id=patient_id,
        job_id=job["_id"],
        client_id=job.get("client_id"),
        user_id=job.get("user_id"),
        inserted_at=now,
        updated_at=now,
    )
    return document

"""The demo records `make run` writes and the examples refer to: patients, and what eHealth's
other registries would hold for one MIS (its legal entity, a division, two doctors, the
dictionaries of the examples' codes), and an open episode of the active patient.

The legal entity's id is the demo client's `client_id`: in eHealth, an MIS's token carries
its legal entity as `client_id`.
"""

from __future__ import annotations

from typing import Any

from service.storage.entities import EntityStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore

DEMO_CLIENT = "9e9b8a1f-0c2d-4e3f-8a4b-5c6d7e8f9a0b"
DEMO_USER = "demo-doctor"
ACTIVE_PATIENT = "5e2f7a8c-3b1d-4c6e-9f0a-1d2c3b4a5e6f"
INACTIVE_PATIENT = "6f3a8b9d-4c2e-4d7f-8a1b-2e3d4c5b6a7f"
DEMO_PATIENTS = {ACTIVE_PATIENT: "active", INACTIVE_PATIENT: "inactive"}
DEMO_DOCTOR = "7c3b2a1d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
DEMO_DOCTOR_TAX_ID = "3126509816"
DEMO_DIVISION = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
DEMO_EPISODE = "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e"


def _reference(resource: str, value: str) -> dict[str, Any]:
    coding = [{"system": "eHealth/resources", "code": resource}]
    return {"identifier": {"type": {"coding": coding}, "value": value}}


def demo_records(client_id: str = DEMO_CLIENT) -> dict[str, list[dict[str, Any]]]:
    """The registry records of one MIS (`client_id`), by registry."""
    return {
        "legal_entities": [{"_id": client_id, "status": "ACTIVE", "public_name": "Demo clinic"}],
        "divisions": [{"_id": DEMO_DIVISION, "status": "ACTIVE", "legal_entity_id": client_id}],
        "employees": [
            {
                "_id": DEMO_DOCTOR,
                "status": "APPROVED",
                "employee_type": "DOCTOR",
                "legal_entity_id": client_id,
                "party": {"tax_id": DEMO_DOCTOR_TAX_ID, "first_name": "Olena"},
                "user_ids": [DEMO_USER],
            }
        ],
        "dictionaries": [
            {"_id": name, "is_active": True, "values": dict.fromkeys(codes, name)}
            for name, codes in DEMO_DICTIONARIES.items()
        ],
    }


def demo_episode(patient_id: str = ACTIVE_PATIENT, client_id: str = DEMO_CLIENT) -> dict[str, Any]:
    return {
        "_id": DEMO_EPISODE,
        "patient_id": patient_id,
        "type": {"system": "eHealth/episode_types", "code": "primary_care"},
        "status": "active",
        "name": "Hypertension follow-up",
        "managing_organization": _reference("legal_entity", client_id),
        "period": {"start": "2026-01-15"},
        "care_manager": _reference("employee", DEMO_DOCTOR),
    }


# The dictionaries of the codes the examples use; a code outside one is a 422 (`inclusion`).
DEMO_DICTIONARIES = {
    "eHealth/encounter_classes": ["AMB", "INPATIENT", "PHC"],
    "eHealth/encounter_types": ["field", "home", "postmortem", "covid"],
    "eHealth/diagnosis_roles": ["primary", "comorbidity", "complication"],
    "eHealth/resources": [
        "employee",
        "episode",
        "visit",
        "division",
        "condition",
        "encounter",
        "observation",
        "diagnostic_report",
        "immunization",
        "legal_entity",
        "service",
        "service_request",
        "medication_request",
        "service_group",
    ],
}


async def write_demo_records(
    patients: PatientStore,
    registries: RegistryStore,
    entities: EntityStore,
    client_id: str = DEMO_CLIENT,
) -> None:
    """Patients, registry records and the episode (idempotent: written again as they are)."""
    for patient_id, status in DEMO_PATIENTS.items():
        await patients.put(patient_id, status)
    for registry, records in demo_records(client_id).items():
        for record in records:
            await registries.put(registry, record)
    await entities.put_episode(demo_episode(ACTIVE_PATIENT, client_id))

"""What the modules of an encounter package share: how a reference is read, where each kind
names its employee, the facts a package's checks read, and the order of a processed job's
links. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service.domain.entities import ENCOUNTER, ENCOUNTER_ENTITY_KINDS, EntityKind


def ref(value: Any) -> str | None:
    """The id a reference (`{"identifier": {"type": ..., "value": id}}`) points at."""
    if isinstance(value, dict):
        identifier = value.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            return identifier["value"]
    return None


def ref_type(value: Any) -> str | None:
    """What a reference says it points at (`identifier.type.coding[0].code`)."""
    try:
        return value["identifier"]["type"]["coding"][0]["code"]
    except (KeyError, IndexError, TypeError):
        return None


def entities_of(content: dict[str, Any], kind: EntityKind) -> list[dict[str, Any]]:
    if kind is ENCOUNTER:
        return [content["encounter"]]
    return content.get(kind.package_key) or []


# The employee each kind names as the one who saw or recorded it, where the original checks
# that employee as it does a condition's asserter.
SOURCE_EMPLOYEE = {
    "conditions": "asserter",
    "observations": "performer",
    "immunizations": "performer",
    "allergy_intolerances": "asserter",
    "devices": "asserter",
    "medication_statements": "asserter",
    "medication_administrations": "performer",
    "procedures": "performer",
    "risk_assessments": "performer",
}


@dataclass
class PackageFacts:
    """What the package refers to, as stored now."""

    employees: dict[str, dict[str, Any]] = field(default_factory=dict)
    division: dict[str, Any] | None = None
    episode: dict[str, Any] | None = None
    legal_entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The visit the encounter refers to, when it is not the package's own.
    stored_visit: dict[str, Any] | None = None
    # Stored entities of the patient the package refers to, per collection.
    stored: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    service_requests: dict[str, dict[str, Any]] = field(default_factory=dict)


def iter_links(content: dict[str, Any]) -> Iterator[tuple[EntityKind, str]]:
    """The entities of a package, in the order of a processed job's links."""
    yield ENCOUNTER, content["encounter"]["id"]
    for kind in ENCOUNTER_ENTITY_KINDS:
        for entity in content.get(kind.package_key) or []:
            yield kind, entity["id"]

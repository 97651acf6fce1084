"""The stored entities as `GET /api/patients/{patient_id}/{collection}/{id}` renders them: each
kind by its own package schema (the fields a client sent, as it sent them), with its `id`,
`patient_id` and the times it was written, in the `data` + `meta` envelope."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from schemas.envelope import Meta, UtcDateTime, envelope_schema
from schemas.episodes import EpisodeSchema
from schemas.package_content import ENTITY_SCHEMAS
from schemas.service_requests import ServiceRequestSchema
from service.domain.entities import EPISODE, READABLE_KINDS, SERVICE_REQUEST, EntityKind

# How each kind renders: a package's entities by their package schema, episodes by theirs.
READ_SCHEMAS: dict[EntityKind, type[Schema]] = {
    **ENTITY_SCHEMAS,
    EPISODE: EpisodeSchema,
    SERVICE_REQUEST: ServiceRequestSchema,
}


def envelope_name(kind: EntityKind) -> str:
    """`ConditionEnvelope`: the name of a kind's response in the OpenAPI document."""
    return f"{READ_SCHEMAS[kind].__name__.removesuffix('Schema')}Envelope"


def _response_schema(kind: EntityKind) -> type[Schema]:
    schema = READ_SCHEMAS[kind]
    return type(
        f"{schema.__name__.removesuffix('Schema')}ResponseSchema",
        (schema,),
        {
            "id": fields.String(attribute="_id"),
            "patient_id": fields.String(),
            "inserted_at": UtcDateTime(),
            "updated_at": UtcDateTime(),
        },
    )


ENTITY_ENVELOPES = {
    kind.collection: envelope_schema(_response_schema(kind), envelope_name(kind))
    for kind in READABLE_KINDS
}


def dump_entity(
    kind: EntityKind, document: dict[str, Any], url: str, request_id: str
) -> dict[str, Any]:
    return ENTITY_ENVELOPES[kind.collection].dump(
        {"data": document, "meta": Meta(200, url, request_id)}
    )

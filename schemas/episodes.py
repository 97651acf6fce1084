"""Episodes of care, as eHealth's medical events service takes their requests (unsigned JSON:
`episodes/episode_create.json`, `episode_update.json`, `episode_close.json`,
`episode_cancel.json`) and renders them.

An episode groups the encounters of one health problem of a patient, managed by one legal
entity and one care manager; an encounter names its episode.
"""

from __future__ import annotations

from marshmallow import fields

from schemas.package_content import codeable_concept, coding, reference, resource_type
from schemas.rules import Date, Nested, StrictSchema, String, UUIDString, one_of

EPISODE_STATUSES = ("active", "closed", "entered_in_error")
EPISODE_TYPES = "eHealth/episode_types"

LegalEntityReference = reference(resource_type("legal_entity"))
EmployeeReference = reference(resource_type("employee"))


class EpisodeStartSchema(StrictSchema):
    start = Date(required=True)


class EpisodeCreateRequestSchema(StrictSchema):
    """`POST /api/patients/{patient_id}/episodes`."""

    id = UUIDString(required=True)
    type = Nested(coding(EPISODE_TYPES, dictionary=EPISODE_TYPES), required=True)
    status = String(required=True, validate=one_of(["active"]))
    name = String(required=True, min_length=1)
    managing_organization = Nested(LegalEntityReference, required=True)
    period = Nested(EpisodeStartSchema, required=True)
    care_manager = Nested(EmployeeReference, required=True)


class EpisodeUpdateRequestSchema(StrictSchema):
    """`PATCH /api/patients/{patient_id}/episodes/{id}`: the name, the care manager."""

    name = String(min_length=1)
    care_manager = Nested(EmployeeReference)


class EpisodeEndSchema(StrictSchema):
    end = Date(required=True)


class EpisodeCloseRequestSchema(StrictSchema):
    """`PATCH /api/patients/{patient_id}/episodes/{id}/actions/close`."""

    period = Nested(EpisodeEndSchema, required=True)
    closing_summary = String()
    status_reason = Nested(
        codeable_concept("eHealth/episode_closing_reasons", item_required=("code",)),
        required=True,
    )


class EpisodeCancelRequestSchema(StrictSchema):
    """`PATCH /api/patients/{patient_id}/episodes/{id}/actions/cancel`."""

    explanatory_letter = String()
    status_reason = Nested(
        codeable_concept("eHealth/cancellation_reasons", item_required=("code",)),
        required=True,
    )


class EpisodePeriodSchema(StrictSchema):
    start = Date()
    end = Date()


class EpisodeSchema(StrictSchema):
    """An episode as stored and as a read renders it."""

    id = UUIDString(required=True)
    type = Nested(coding(EPISODE_TYPES, dictionary=EPISODE_TYPES))
    status = String(validate=one_of(EPISODE_STATUSES))
    name = String()
    managing_organization = Nested(LegalEntityReference)
    period = Nested(EpisodePeriodSchema)
    care_manager = Nested(EmployeeReference)
    closing_summary = String()
    status_reason = fields.Raw()
    explanatory_letter = String()


class EpisodeParamsSchema(StrictSchema):
    """The path parameter of the requests about one episode (`{episode_id}`), which a
    message carries as `params`."""

    episode_id = UUIDString(required=True)

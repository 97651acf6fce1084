"""The requests of an encounter package, as eHealth's medical events service takes them.

A request is an envelope: `signed_data` (base64 of what the MIS signed: the package content,
`schemas.package_content`) and, for a create, the `visit` the encounter belongs to. The
envelope is checked on the POST (a 422 at once); the signature and the content are checked
by the consumer, as the original does.

    {"visit": {"id": "<uuid>", "period": {"start": "...", "end": "..."}},
     "signed_data": "<base64>"}
"""

from __future__ import annotations

from schemas.rules import DateTime, Nested, StrictSchema, String, UUIDString


class VisitPeriodSchema(StrictSchema):
    start = DateTime(required=True)
    end = DateTime(required=True)


class VisitSchema(StrictSchema):
    id = UUIDString(required=True)
    period = Nested(VisitPeriodSchema, required=True)


class PackageCreateRequestSchema(StrictSchema):
    """`POST /api/patients/{patient_id}/encounter_package`, and the `data` of an
    `encounter_package.create` message."""

    visit = Nested(VisitSchema)
    signed_data = String(required=True, min_length=1)


class PackageCancelRequestSchema(StrictSchema):
    """`PATCH /api/patients/{patient_id}/encounter_package`, and the `data` of an
    `encounter_package.cancel` message: the signed package, its entities to cancel marked
    `entered_in_error`."""

    signed_data = String(required=True, min_length=1)

"""Service requests (referrals for a service), as eHealth's medical events service takes their
requests and renders them.

A create (`POST /api/patients/{patient_id}/service_requests`) is an envelope,
`{"signed_data"}` (`service_requests/service_request_create.json`), checked at once; the
content the MIS signs is checked by the consumer, property for property the original's
`service_request_create_signed_content.json` (JSON Schema draft 4). It carries no id: the
service request's id is the service's.
"""

from __future__ import annotations

from marshmallow import fields

from schemas.one_of import OneOf
from schemas.package_content import codeable_concept, period, reference, resource_type
from schemas.rules import DateTime, List, Nested, StrictSchema, String, UUIDString, one_of

SERVICE_REQUEST_STATUSES = ("active", "in_progress", "completed", "entered_in_error", "recalled")
CATEGORIES = "eHealth/SNOMED/service_request_categories"

EmployeeReference = reference(resource_type("employee"))
LegalEntityReference = reference(resource_type("legal_entity"))
_CodeReference = reference(resource_type("service_group", "service"))
_ContextReference = reference(resource_type("encounter"))
_ReasonReference = reference(resource_type("observation", "condition"))
_InfoReference = reference(resource_type("episode_of_care", "diagnostic_report"))


# --- The requests -------------------------------------------------------------------------------


class ServiceRequestCreateRequestSchema(StrictSchema):
    """`POST /api/patients/{patient_id}/service_requests`, and the `data` of a
    `service_request.create` message."""

    signed_data = String(required=True, min_length=1)


# --- The signed content -------------------------------------------------------------------------


class ServiceRequestCreateContentSchema(StrictSchema):
    """The signed content of a service request create."""

    status = String(required=True, validate=one_of(["active"]))
    intent = String(required=True, validate=one_of(["plan", "proposal", "order"]))
    category = Nested(codeable_concept(CATEGORIES), required=True)
    code = Nested(_CodeReference, required=True)
    context = Nested(_ContextReference, required=True)
    authored_on = DateTime(required=True)
    requester_employee = Nested(EmployeeReference, required=True)
    requester_legal_entity = Nested(LegalEntityReference, required=True)
    reason_reference = List(Nested(_ReasonReference), min_items=1)
    supporting_info = List(Nested(_InfoReference), min_items=1)
    note = String()
    patient_instruction = String()
    permitted_resources = List(Nested(_InfoReference))
    occurrence_date_time = DateTime()
    occurrence_period = Nested(period(("start", "end")))
    priority = String(allow_none=True)


SERVICE_REQUEST_CREATE_CONTENT = ServiceRequestCreateContentSchema()

# The original's `oneOf` of a create: an occurrence is a date-time or a period, not both.
SERVICE_REQUEST_ONE_OF = (OneOf((), ("occurrence_date_time", "occurrence_period"), False),)


# --- As stored and read -------------------------------------------------------------------------


class ServiceRequestSchema(ServiceRequestCreateContentSchema):
    """A service request as stored and as a read renders it."""

    status = String(validate=one_of(SERVICE_REQUEST_STATUSES))
    episode_id = UUIDString()
    used_by_employee = Nested(EmployeeReference)
    used_by_legal_entity = Nested(LegalEntityReference)
    status_reason = fields.Raw()
    explanatory_letter = String()

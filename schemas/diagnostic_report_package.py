"""The requests of a diagnostic report package, and the content the MIS signs, as eHealth's
medical events service checks them.

A request is an envelope, for a create (`POST /api/patients/{patient_id}/
diagnostic_report_package`) as for a cancel (`PATCH` on the same path): `signed_data` only,
base64 of what the MIS signed. The envelope is checked on the POST or PATCH (a 422 at once);
the signature and the content are checked by the consumer, as the original does.

    {"signed_data": "<base64>"}

The content is a diagnostic report with the observations it reports, property for property the
original's schemas (`diagnostic_report_package_{create,cancel}_signed_content.json`, JSON
Schema draft 4):

    {"diagnostic_report": {...}, "observations": [{...}, ...]}

Their definitions are the encounter package's (`schemas.package_content`), but for what a
report made outside an encounter cannot have or must have: no `encounter` (a report) and no
`context` (an observation), no `report_origin`, `primary_source` true and nothing else, an
observation's `diagnostic_report` required, a report's `managing_organization` required and its
`code` a service only (a service group too in a cancel, as in the encounter package's). A
cancel's report says why it is cancelled (`cancellation_reason`, `explanatory_letter`, both
required here) and has no `origin_episode`. Each class below says what differs; the rest is
inherited, so that both packages read and store an entity alike.
"""

from __future__ import annotations

from schemas.one_of import OBSERVATION_VALUES, OneOf
from schemas.package_content import (
    MAX_ENTITIES,
    CancelDiagnosticReportSchema,
    CancellationReasonSchema,
    DiagnosticReportSchema,
    ObservationSchema,
    reference,
    resource_type,
)
from schemas.rules import Boolean, List, Nested, StrictSchema, String, one_of

# --- The requests -------------------------------------------------------------------------------


class DiagnosticReportPackageCreateRequestSchema(StrictSchema):
    """`POST /api/patients/{patient_id}/diagnostic_report_package`, and the `data` of a
    `diagnostic_report_package.create` message."""

    signed_data = String(required=True, min_length=1)


class DiagnosticReportPackageCancelRequestSchema(StrictSchema):
    """`PATCH /api/patients/{patient_id}/diagnostic_report_package`, and the `data` of a
    `diagnostic_report_package.cancel` message: the signed package, what it cancels marked
    `entered_in_error`."""

    signed_data = String(required=True, min_length=1)


# --- What differs from the encounter package's definitions --------------------------------------


def _primary_source() -> Boolean:
    """`{"type": "boolean", "enum": [true]}`: "could Not be false for this route"."""
    return Boolean(required=True, validate=one_of([True]))


# A report's organization, as the encounter package's says it (its type required, its codings
# neither required nor bounded), but required.
_ManagingOrganizationSchema = reference(
    resource_type("legal_entity", required_coding=False, coding_min=None), type_required=True
)


class DiagnosticReportPackageObservationSchema(ObservationSchema):
    """An observation a diagnostic report package reports: it refers to the package's report,
    not to an encounter, and its performer is the only source it may name."""

    class Meta(ObservationSchema.Meta):
        exclude = ("context", "report_origin")

    primary_source = _primary_source()
    diagnostic_report = Nested(reference(resource_type("diagnostic_report")), required=True)


class DiagnosticReportPackageReportSchema(DiagnosticReportSchema):
    """The diagnostic report of a package of its own: no encounter and no report origin, a
    service for its code (not a service group), its managing organization required."""

    class Meta(DiagnosticReportSchema.Meta):
        exclude = ("encounter", "report_origin")

    code = Nested(reference(resource_type("service")), required=True)
    primary_source = _primary_source()
    managing_organization = Nested(_ManagingOrganizationSchema, required=True)


class DiagnosticReportPackageCancelReportSchema(CancelDiagnosticReportSchema):
    """The diagnostic report of a cancelled package: as the encounter package's cancelled
    report (its status any string, its code an open object of a service or a service group),
    without an encounter, an episode or a report origin, and why it is cancelled required."""

    class Meta(CancelDiagnosticReportSchema.Meta):
        exclude = ("encounter", "origin_episode", "report_origin")

    primary_source = _primary_source()
    managing_organization = Nested(_ManagingOrganizationSchema, required=True)
    explanatory_letter = String(required=True)
    cancellation_reason = Nested(CancellationReasonSchema, required=True)


# --- The packages ---------------------------------------------------------------------------


def _observations() -> List:
    return List(Nested(DiagnosticReportPackageObservationSchema), max_items=MAX_ENTITIES)


class DiagnosticReportPackageCreateContentSchema(StrictSchema):
    """The signed content of a package that creates a diagnostic report and its
    observations."""

    diagnostic_report = Nested(DiagnosticReportPackageReportSchema, required=True)
    observations = _observations()


class DiagnosticReportPackageCancelContentSchema(StrictSchema):
    """The signed content of a package that cancels a diagnostic report, its observations, or
    both."""

    diagnostic_report = Nested(DiagnosticReportPackageCancelReportSchema, required=True)
    observations = _observations()


DIAGNOSTIC_REPORT_PACKAGE_CREATE_CONTENT = DiagnosticReportPackageCreateContentSchema()
DIAGNOSTIC_REPORT_PACKAGE_CANCEL_CONTENT = DiagnosticReportPackageCancelContentSchema()

# The original's `oneOf` rules for this package (its consumer's `@one_of_request_params`), in
# the order it checks them: a report's performer and results interpreter are a reference or a
# text; an observation has at most one effective[x] and exactly one value[x], as each of its
# components has one value[x]. Unlike an encounter package's, an observation's source is not
# one of report_origin|performer: it has no report_origin here.
DIAGNOSTIC_REPORT_PACKAGE_ONE_OF = (
    OneOf(("diagnostic_report", "performer"), ("reference", "text"), True),
    OneOf(("diagnostic_report", "results_interpreter"), ("reference", "text"), True),
    OneOf(("observations",), ("effective_date_time", "effective_period"), False),
    OneOf(("observations",), OBSERVATION_VALUES, True),
    OneOf(("observations", "components"), OBSERVATION_VALUES, True),
)

"""The encounter package: an encounter and the ten kinds of entities recorded with it.

Field names follow the eHealth medical-events API in snake_case. Ids are UUIDs chosen by the
submitting system; codes are `{"coding": [{"system", "code"}], "text"}`; dates are ISO 8601.
Every entity refers to the package's encounter by `encounter_id`; an encounter's diagnoses
refer to conditions of the package, an observation may refer to a diagnostic report of the
package. References must point inside the package, and ids must be unique within it.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, validates_schema

from schemas.rules import (
    Boolean,
    Date,
    DateTime,
    Integer,
    List,
    Nested,
    Number,
    Rule,
    StrictSchema,
    String,
    UUIDString,
    number_range,
    one_of,
    violation,
)
from service.domain.entities import (
    ALLERGY_INTOLERANCE,
    CONDITION,
    DEVICE,
    DIAGNOSTIC_REPORT,
    ENCOUNTER,
    ENCOUNTER_ENTITY_KINDS,
    IMMUNIZATION,
    MEDICATION_ADMINISTRATION,
    MEDICATION_STATEMENT,
    OBSERVATION,
    PROCEDURE,
    RISK_ASSESSMENT,
    EntityKind,
)

ENTERED_IN_ERROR = "entered_in_error"


class CodingSchema(StrictSchema):
    system = String(required=True, max_length=255)
    code = String(required=True, max_length=255)


class CodeableConceptSchema(StrictSchema):
    coding = List(Nested(CodingSchema), required=True, min_length=1, max_length=10)
    text = String(max_length=1000)


def Code(**kwargs: Any) -> Nested:
    return Nested(CodeableConceptSchema, **kwargs)


def Codes(**kwargs: Any) -> List:
    return List(Nested(CodeableConceptSchema), **kwargs)


class PeriodSchema(StrictSchema):
    start = DateTime(required=True)
    end = DateTime()

    @validates_schema
    def end_after_start(self, data: dict[str, Any], **_: Any) -> None:
        if "end" in data and data["end"] < data["start"]:
            raise ValidationError({"end": [Rule("period", "must not be before start")]})


class QuantitySchema(StrictSchema):
    value = Number(required=True, validate=number_range(-1e12, 1e12))
    unit = String(required=True, max_length=100)
    system = String(max_length=255)
    code = String(max_length=255)


class DiagnosisSchema(StrictSchema):
    condition_id = UUIDString(required=True)
    role = Code(required=True)
    rank = Integer(validate=number_range(1, 1000))


class EncounterSchema(StrictSchema):
    id = UUIDString(required=True)
    # Entered in error only by a cancel, never as submitted.
    status = String(required=True, validate=one_of(["finished"]))
    date = DateTime(required=True)
    period = Nested(PeriodSchema, required=True)
    class_ = Nested(CodingSchema, required=True, data_key="class")
    type = Code(required=True)
    reasons = Codes(max_length=50)
    diagnoses = List(Nested(DiagnosisSchema), max_length=50)
    performer_id = UUIDString()
    division_id = UUIDString()


class _EncounterEntitySchema(StrictSchema):
    id = UUIDString(required=True)
    encounter_id = UUIDString(required=True)
    primary_source = Boolean(required=True)


class ConditionSchema(_EncounterEntitySchema):
    code = Code(required=True)
    clinical_status = String(
        required=True,
        validate=one_of(["active", "recurrence", "inactive", "remission", "resolved"]),
    )
    verification_status = String(
        required=True,
        validate=one_of(["provisional", "differential", "confirmed", "refuted", ENTERED_IN_ERROR]),
    )
    onset_date = DateTime(required=True)
    asserted_date = DateTime()
    severity = Code()
    body_sites = Codes(max_length=20)


class ObservationSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["valid", ENTERED_IN_ERROR]))
    categories = Codes(required=True, min_length=1, max_length=10)
    code = Code(required=True)
    effective_date_time = DateTime(required=True)
    issued = DateTime(required=True)
    value_quantity = Nested(QuantitySchema)
    value_string = String(max_length=2000)
    value_boolean = Boolean()
    value_codeable_concept = Code()
    diagnostic_report_id = UUIDString()
    comment = String(max_length=2000)

    VALUE_FIELDS = ("value_quantity", "value_string", "value_boolean", "value_codeable_concept")

    @validates_schema
    def exactly_one_value(self, data: dict[str, Any], **_: Any) -> None:
        given = [name for name in self.VALUE_FIELDS if name in data]
        if len(given) != 1:
            raise violation(
                Rule("one_of", "exactly one value_* property is required", list(self.VALUE_FIELDS))
            )


class ImmunizationSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["completed", ENTERED_IN_ERROR]))
    not_given = Boolean(required=True)
    vaccine_code = Code(required=True)
    date = DateTime(required=True)
    manufacturer = String(max_length=255)
    lot_number = String(max_length=100)
    expiration_date = Date()
    dose_quantity = Nested(QuantitySchema)
    route = Code()
    site = Code()


class AllergyIntoleranceSchema(_EncounterEntitySchema):
    clinical_status = String(required=True, validate=one_of(["active", "inactive", "resolved"]))
    verification_status = String(
        required=True, validate=one_of(["unconfirmed", "confirmed", "refuted", ENTERED_IN_ERROR])
    )
    type = String(required=True, validate=one_of(["allergy", "intolerance"]))
    category = String(
        required=True, validate=one_of(["food", "medication", "environment", "biologic"])
    )
    criticality = String(required=True, validate=one_of(["low", "high", "unable_to_assess"]))
    code = Code(required=True)
    onset_date_time = DateTime(required=True)
    asserted_date = DateTime(required=True)


class PredictionSchema(StrictSchema):
    outcome = Code(required=True)
    probability_decimal = Number(validate=number_range(0, 100))
    rationale = String(max_length=2000)


class RiskAssessmentSchema(_EncounterEntitySchema):
    status = String(
        required=True, validate=one_of(["preliminary", "final", "amended", ENTERED_IN_ERROR])
    )
    code = Code(required=True)
    method = Code()
    asserted_date = DateTime(required=True)
    predictions = List(Nested(PredictionSchema), max_length=20)
    mitigation = String(max_length=2000)


class DeviceSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["active", "inactive", ENTERED_IN_ERROR]))
    type = Code(required=True)
    asserted_date = DateTime(required=True)
    usage_period = Nested(PeriodSchema)
    manufacturer = String(max_length=255)
    model = String(max_length=255)
    lot_number = String(max_length=100)
    serial_number = String(max_length=100)


class DosageSchema(StrictSchema):
    text = String(max_length=2000)
    dose = Nested(QuantitySchema)
    route = Code()


class MedicationStatementSchema(_EncounterEntitySchema):
    status = String(
        required=True, validate=one_of(["active", "completed", "intended", ENTERED_IN_ERROR])
    )
    medication_code = Code(required=True)
    asserted_date = DateTime(required=True)
    effective_period = Nested(PeriodSchema)
    dosage = Nested(DosageSchema)
    note = String(max_length=2000)


class MedicationAdministrationSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["completed", ENTERED_IN_ERROR]))
    medication_code = Code(required=True)
    category = Code()
    effective_date_time = DateTime(required=True)
    dosage = Nested(DosageSchema)
    note = String(max_length=2000)


class DiagnosticReportSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["final", ENTERED_IN_ERROR]))
    categories = Codes(required=True, min_length=1, max_length=10)
    code = Code(required=True)
    issued = DateTime(required=True)
    effective_period = Nested(PeriodSchema)
    conclusion = String(max_length=4000)


class ProcedureSchema(_EncounterEntitySchema):
    status = String(required=True, validate=one_of(["completed", "not_done", ENTERED_IN_ERROR]))
    code = Code(required=True)
    category = Code()
    performed_date_time = DateTime(required=True)
    outcome = Code()
    note = String(max_length=2000)


# The schema of each kind of entity, as a package carries it and as a read renders it.
ENTITY_SCHEMAS: dict[EntityKind, type[StrictSchema]] = {
    ENCOUNTER: EncounterSchema,
    CONDITION: ConditionSchema,
    OBSERVATION: ObservationSchema,
    ALLERGY_INTOLERANCE: AllergyIntoleranceSchema,
    IMMUNIZATION: ImmunizationSchema,
    RISK_ASSESSMENT: RiskAssessmentSchema,
    DEVICE: DeviceSchema,
    MEDICATION_STATEMENT: MedicationStatementSchema,
    MEDICATION_ADMINISTRATION: MedicationAdministrationSchema,
    DIAGNOSTIC_REPORT: DiagnosticReportSchema,
    PROCEDURE: ProcedureSchema,
}


class EncounterPackageSchema(StrictSchema):
    """`data` of an `encounter_package.create` submission."""

    encounter = Nested(EncounterSchema, required=True)
    conditions = List(Nested(ConditionSchema))
    observations = List(Nested(ObservationSchema))
    allergy_intolerances = List(Nested(AllergyIntoleranceSchema))
    immunizations = List(Nested(ImmunizationSchema))
    risk_assessments = List(Nested(RiskAssessmentSchema))
    devices = List(Nested(DeviceSchema))
    medication_statements = List(Nested(MedicationStatementSchema))
    medication_administrations = List(Nested(MedicationAdministrationSchema))
    diagnostic_reports = List(Nested(DiagnosticReportSchema))
    procedures = List(Nested(ProcedureSchema))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def references_point_inside_the_package(
        self, data: dict[str, Any], original: Any, **_: Any
    ) -> None:
        """Checked on the submitted data, so that the indices are the client's own and these
        errors come together with the field errors, all at once."""
        if not isinstance(original, dict):
            return
        errors: dict[str, Any] = {}

        def report(path: list[str | int], rule: Rule) -> None:
            node = errors
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = [rule]

        encounter = _object(original.get("encounter"))
        encounter_id = _text(encounter.get("id"))
        seen = {encounter_id} if encounter_id else set()
        for kind in ENCOUNTER_ENTITY_KINDS:
            for index, entity in _objects(original.get(kind.package_key)):
                entity_id = _text(entity.get("id"))
                if entity_id and entity_id in seen:
                    report([kind.package_key, index, "id"], DUPLICATE_ID)
                seen.add(entity_id)
                reference = _text(entity.get("encounter_id"))
                if encounter_id and reference and reference != encounter_id:
                    report([kind.package_key, index, "encounter_id"], NOT_THE_ENCOUNTER)

        condition_ids = {_text(c.get("id")) for _, c in _objects(original.get("conditions"))}
        for index, diagnosis in _objects(encounter.get("diagnoses")):
            reference = _text(diagnosis.get("condition_id"))
            if reference and reference not in condition_ids:
                report(["encounter", "diagnoses", index, "condition_id"], NOT_A_CONDITION)
        reports = {_text(r.get("id")) for _, r in _objects(original.get("diagnostic_reports"))}
        for index, observation in _objects(original.get("observations")):
            reference = _text(observation.get("diagnostic_report_id"))
            if reference and reference not in reports:
                report(["observations", index, "diagnostic_report_id"], NOT_A_REPORT)
        if errors:
            raise ValidationError(errors)


DUPLICATE_ID = Rule("unique", "id is used twice in the package")
NOT_THE_ENCOUNTER = Rule("reference", "must be the id of the package's encounter", ["encounter"])
NOT_A_CONDITION = Rule("reference", "must be the id of a condition in the package", ["conditions"])
NOT_A_REPORT = Rule(
    "reference", "must be the id of a diagnostic report in the package", ["diagnostic_reports"]
)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(value, list):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]


def _text(value: Any) -> str | None:
    """A reference as the schema will store it (UUIDs lowercase), or None if not a string."""
    return value.lower() if isinstance(value, str) and value else None


class EncounterCancelSchema(StrictSchema):
    """`data` of an `encounter_package.cancel` submission: the encounter to mark as entered in
    error, with everything recorded with it."""

    encounter_id = UUIDString(required=True)
    reason = Code()
    explanatory_letter = String(max_length=2000)

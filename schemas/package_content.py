"""The signed content of an encounter package, as eHealth's medical events service checks it.

Two schemas, property for property those of the original's packages (JSON Schema draft 4,
validated by NExJsonSchema): `PACKAGE_CREATE_CONTENT` for a package that records an encounter
and what was found in it, `PACKAGE_CANCEL_CONTENT` for the same package sent again to cancel it
(the encounter and the diagnostic reports then carry `cancellation_reason` and
`explanatory_letter`, and a few properties are required or typed differently).

The original's schemas repeat a few shapes with small variations (a codeable concept whose
coding is required or not, has at least one item or not, at most one...; a reference whose
identifier type is required or not...). Each shape is built by a factory here, one parameter
per variation, so that each property reads as what the original says of it:

    context = Nested(reference(resource_type("encounter", dictionary=RESOURCES)), required=True)

Where the original's schemas are odd, they are kept as they are, because the original accepts
and refuses by them (a comment says so at each place): a component's `value_time` is a
date-time and its `value_date_time` a date; the categories of a diagnostic report are checked
in their first item only; a diagnostic report's `issued` and `effective_period` are not
checked as dates (their format, "dateTime", is unknown to the validator); some properties
described as a dictionary are not checked against it, their description being misspelt.

A property described "Dictionary: <name>" is checked against that dictionary of eHealth's
registry when the job loads the package with it (`schemas.rules.use_dictionaries`).

Ours, not the original's: two kinds the original's package lacks, `medication_administrations`
and `procedures` (at most 50 of each), written in the style of the original's kinds: an `id`,
a `status` (`completed`, for a procedure also `not_done`; any string in a cancellation), a
`context` that refers to the encounter as a condition's does, `primary_source`, a `performer`,
and their codes, each from its own eHealth dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from marshmallow import INCLUDE, Schema

from schemas.rules import (
    Boolean,
    Date,
    DateTime,
    List,
    Nested,
    Number,
    StrictSchema,
    String,
    UUIDString,
    dictionary,
    number_range,
    one_of,
    pattern,
)
from service.domain.entities import (
    ALLERGY_INTOLERANCE,
    CONDITION,
    DEVICE,
    DIAGNOSTIC_REPORT,
    ENCOUNTER,
    IMMUNIZATION,
    MEDICATION_ADMINISTRATION,
    MEDICATION_STATEMENT,
    OBSERVATION,
    PROCEDURE,
    RISK_ASSESSMENT,
    EntityKind,
)

RESOURCES = "eHealth/resources"
UCUM_UNITS = "eHealth/ucum/units"
COMPARATORS = (">", ">=", "=", "<=", "<")
MAX_ENTITIES = 50


# --- Fields and bases this module needs beyond `schemas.rules` --------------------------------


class OpenSchema(Schema):
    """An object without `additionalProperties: false`: properties it does not name are
    allowed, and kept as they were sent."""

    class Meta:
        unknown = INCLUDE


class FirstItemArray(List):
    """An array whose `items` is a list of one schema (draft 4's tuple validation): only the
    first item is checked, and the items after it are accepted whatever they are."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> Any:
        if not isinstance(value, list) or len(value) < 2:
            return super()._deserialize(value, attr, data, **kw)
        return [*super()._deserialize(value[:1], attr, data, **kw), *value[1:]]

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kw: Any) -> Any:
        if not isinstance(value, list) or len(value) < 2:
            return super()._serialize(value, attr, obj, **kw)
        first = super()._serialize(value[:1], attr, obj, **kw)
        assert first is not None  # marshmallow's List serializes a list to a list
        return [*first, *value[1:]]


def _validators(
    choices: Sequence[str] | None = None, dictionary_name: str | None = None
) -> list[Any]:
    if dictionary_name is not None:
        # The original's schema mapper puts the dictionary's codes in the place of the enum.
        return [dictionary(dictionary_name, instead_of=choices)]
    return [one_of(choices)] if choices is not None else []


def dictionary_string(name: str, **kwargs: Any) -> String:
    """A string described "Dictionary: <name>": a key of that dictionary."""
    return String(validate=[dictionary(name)], **kwargs)


# --- Factories of the shapes the original repeats ---------------------------------------------

_NAMES: dict[str, int] = {}


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("/", "_").split("_"))


def _generated(
    stem: str, attributes: dict[str, Any], doc: str, base: type[Schema] = StrictSchema
) -> type[Schema]:
    """A schema class named after what it holds; a variation of a name already taken gets a
    number, so that each class has its own name (in an OpenAPI document, for one)."""
    count = _NAMES.get(stem, 0) + 1
    _NAMES[stem] = count
    name = stem if count == 1 else f"{stem}{count}"
    generated = base.from_dict(attributes, name=f"{name}Schema")
    generated.__doc__ = doc
    return generated


def _stem(systems: tuple[str, ...] | None, codes: tuple[str, ...] | None) -> str:
    if systems == (RESOURCES,) and codes:
        return "Or".join(_camel(code) for code in codes) + "Resource"
    if systems:
        return "Or".join(_camel(system.rsplit("/", 1)[-1]) for system in systems)
    return "Any"


def _tuple(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def coding(
    systems: str | Sequence[str] | None,
    *,
    codes: Sequence[str] | None = None,
    dictionary: str | None = None,
    required: Sequence[str] = ("code", "system"),
) -> type[Schema]:
    """A coding, `{"system", "code"}`: `system` one of `systems` (any string when None),
    `code` one of `codes` and a key of `dictionary` when given."""
    return _coding(_tuple(systems), _tuple(codes), dictionary, frozenset(required))


@cache
def _coding(
    systems: tuple[str, ...] | None,
    codes: tuple[str, ...] | None,
    dictionary_name: str | None,
    required: frozenset[str],
) -> type[Schema]:
    return _generated(
        _stem(systems, codes) + "Coding",
        {
            "system": String(required="system" in required, validate=_validators(systems)),
            "code": String(
                required="code" in required, validate=_validators(codes, dictionary_name)
            ),
        },
        f"A coding of {', '.join(systems or ('any system',))}.",
    )


def codeable_concept(
    systems: str | Sequence[str] | None,
    *,
    codes: Sequence[str] | None = None,
    dictionary: str | None = None,
    required_coding: bool = True,
    coding_min: int | None = 1,
    coding_max: int | None = None,
    text_max: int | None = None,
    text_nullable: bool = False,
    item_required: Sequence[str] = ("code", "system"),
) -> type[Schema]:
    """A codeable concept, `{"coding": [coding], "text"}`, and the variations of it the original
    has: `coding` required or not, its bounds, `text`'s maximum length and whether it may be
    null, and which properties of a coding are required."""
    return _codeable_concept(
        _tuple(systems),
        _tuple(codes),
        dictionary,
        required_coding,
        coding_min,
        coding_max,
        text_max,
        text_nullable,
        frozenset(item_required),
    )


@cache
def _codeable_concept(
    systems: tuple[str, ...] | None,
    codes: tuple[str, ...] | None,
    dictionary_name: str | None,
    required_coding: bool,
    coding_min: int | None,
    coding_max: int | None,
    text_max: int | None,
    text_nullable: bool,
    item_required: frozenset[str],
) -> type[Schema]:
    item = _coding(systems, codes, dictionary_name, item_required)
    return _generated(
        _stem(systems, codes) + "Concept",
        {
            "coding": List(
                Nested(item),
                required=required_coding,
                min_items=coding_min,
                max_items=coding_max,
            ),
            "text": String(max_length=text_max, allow_none=text_nullable),
        },
        f"A codeable concept of {', '.join(systems or ('any system',))}.",
    )


def dictionary_concept(system: str, **kwargs: Any) -> type[Schema]:
    """A codeable concept of one system whose codes are the keys of the dictionary of the
    same name (the original describes the code "Dictionary: <system>")."""
    return codeable_concept(system, dictionary=system, **kwargs)


def resource_type(*codes: str, **kwargs: Any) -> type[Schema]:
    """The type of a reference's identifier: a codeable concept of `eHealth/resources` whose
    code names the kind referred to."""
    return codeable_concept(RESOURCES, codes=codes, **kwargs)


@cache
def reference(
    identifier_type: type[Schema],
    *,
    type_required: bool = False,
    uuid_value: bool = False,
    open_object: bool = False,
    display_value: bool = False,
) -> type[Schema]:
    """A reference, `{"identifier": {"type", "value"}}`: `type_required` when the identifier
    must say its type, `uuid_value` when its value must be a UUID, `open_object` when the
    reference itself allows other properties, `display_value` a nullable string beside the
    identifier."""
    value = UUIDString(required=True) if uuid_value else String(required=True)
    stem = identifier_type.__name__.removesuffix("Schema").removesuffix("Concept")
    identifier = _generated(
        f"{stem}Identifier",
        {"type": Nested(identifier_type, required=type_required), "value": value},
        "The identifier of a reference: its type and its value.",
    )
    attributes: dict[str, Any] = {"identifier": Nested(identifier, required=True)}
    if display_value:
        attributes["display_value"] = String(allow_none=True)
    return _generated(
        f"{stem}Reference",
        attributes,
        "A reference to another entity, by its identifier.",
        OpenSchema if open_object else StrictSchema,
    )


@cache
def quantity(required: tuple[str, ...] = ("value", "unit")) -> type[Schema]:
    """A quantity in UCUM units (`value_quantity`), with the properties `required`."""
    return _generated(
        "Quantity",
        {
            "value": Number(required="value" in required),
            "comparator": String(required="comparator" in required, validate=one_of(COMPARATORS)),
            "unit": dictionary_string(UCUM_UNITS, required="unit" in required),
            "system": String(required="system" in required, validate=one_of([UCUM_UNITS])),
            "code": dictionary_string(UCUM_UNITS, required="code" in required),
        },
        "A quantity: a number, its unit and how it compares.",
    )


@cache
def quantity_range(bound: type[Schema]) -> type[Schema]:
    """A range of quantities, both bounds required."""
    return _generated(
        "QuantityRange",
        {"low": Nested(bound, required=True), "high": Nested(bound, required=True)},
        "A range: a low and a high quantity.",
    )


@cache
def period(required: tuple[str, ...] = ("start",), *, checked_format: bool = True) -> type[Schema]:
    """A period, `{"start", "end"}`; `checked_format` False where the original gives its
    bounds a format its validator does not know, and so checks nothing but their type."""
    bound = DateTime if checked_format else String
    return _generated(
        "Period",
        {"start": bound(required="start" in required), "end": bound(required="end" in required)},
        "A period: a start and, if it has ended, an end.",
    )


# --- Definitions the original shares between kinds --------------------------------------------

QuantitySchema = quantity()
ValueRangeSchema = quantity_range(QuantitySchema)
ReportOriginSchema = dictionary_concept("eHealth/report_origins", required_coding=False)
InterpretationSchema = dictionary_concept(
    "eHealth/observation_interpretations", required_coding=False
)
# `codeable_concept` of the original: its codes are eHealth resources (an observation's
# `value_codeable_concept` too).
CodeableConceptSchema = dictionary_concept(RESOURCES)
ReferenceSchema = reference(CodeableConceptSchema)
PerformerSchema = reference(resource_type("employee"))
ReasonSchema = dictionary_concept("eHealth/ICPC2/reasons")
ActionSchema = dictionary_concept("eHealth/ICPC2/actions")
EncounterReferenceSchema = reference(resource_type("encounter"))
# A condition's context: its code is also checked against the dictionary of resources.
ConditionContextSchema = reference(resource_type("encounter", dictionary=RESOURCES))


class ValueRatioSchema(StrictSchema):
    """A ratio of two quantities."""

    numerator = Nested(QuantitySchema, required=True)
    denominator = Nested(QuantitySchema, required=True)


class ValueSampledDataSchema(StrictSchema):
    """A series of measurements."""

    origin = Number()
    period = Number()
    factor = Number()
    lower_limit = Number()
    upper_limit = Number()
    dimensions = Number()
    data = String(required=True)


class AgeRangeSchema(StrictSchema):
    """The ages a reference range applies to."""

    low = Nested(QuantitySchema)
    high = Nested(QuantitySchema)


class ReferenceRangeSchema(StrictSchema):
    """A range of normal values of an observation."""

    low = Nested(QuantitySchema)
    high = Nested(QuantitySchema)
    type = Nested(dictionary_concept("eHealth/reference_range_types"))
    applies_to = List(Nested(dictionary_concept("eHealth/reference_range_applications")))
    age = Nested(AgeRangeSchema)
    text = String()


# --- Encounter --------------------------------------------------------------------------------


class DiagnosisSchema(StrictSchema):
    """A diagnosis of an encounter: a condition of the package, its role and its rank."""

    condition = Nested(
        reference(resource_type("condition", dictionary=RESOURCES, coding_max=1)), required=True
    )
    role = Nested(dictionary_concept("eHealth/diagnosis_roles"), required=True)
    rank = Number(validate=number_range(maximum=10))


class EncounterSchema(StrictSchema):
    """The encounter a package records."""

    id = UUIDString(required=True)
    status = String(required=True, validate=one_of(["finished"]))
    episode = Nested(reference(resource_type("episode")), required=True)
    visit = Nested(reference(resource_type("visit")), required=True)
    class_ = Nested(
        coding("eHealth/encounter_classes", dictionary="eHealth/encounter_classes"),
        required=True,
        data_key="class",
        attribute="class",  # stored as the client names it, not as Python must
    )
    type = Nested(dictionary_concept("eHealth/encounter_types"), required=True)
    incoming_referral = Nested(ReferenceSchema)
    performer = Nested(PerformerSchema, required=True)
    reasons = List(Nested(ReasonSchema), required=True, min_items=1)
    diagnoses = List(Nested(DiagnosisSchema), required=True, min_items=1)
    actions = List(Nested(ActionSchema), required=True, min_items=1)
    date = DateTime(required=True)
    division = Nested(reference(resource_type("division")))
    prescriptions = String()
    supporting_info = List(Nested(reference(resource_type("observation", "diagnostic_report"))))


# --- Condition --------------------------------------------------------------------------------


class StageSchema(StrictSchema):
    """The stage of a condition."""

    summary = Nested(dictionary_concept("eHealth/condition_stages"), required=True)


class EvidenceSchema(StrictSchema):
    """What a condition was found by: reasons, and observations of the package."""

    codes = List(Nested(dictionary_concept("eHealth/ICPC2/reasons", coding_max=1)), min_items=1)
    details = List(Nested(reference(resource_type("observation"))), min_items=1)


class ConditionSchema(StrictSchema):
    """A condition found in the encounter."""

    id = UUIDString(required=True)
    primary_source = Boolean()
    report_origin = Nested(ReportOriginSchema)
    asserter = Nested(ReferenceSchema)
    asserted_date = DateTime()
    context = Nested(ConditionContextSchema, required=True)
    # No dictionary: the description names two, in words.
    code = Nested(
        codeable_concept(("eHealth/ICPC2/condition_codes", "eHealth/ICD10/condition_codes")),
        required=True,
    )
    clinical_status = dictionary_string("eHealth/condition_clinical_statuses", required=True)
    # The dictionary's name is misspelt in the original ("Health/"), and so it is looked up.
    verification_status = dictionary_string("Health/condition_verification_statuses", required=True)
    severity = Nested(dictionary_concept("eHealth/condition_severities"))
    body_sites = List(Nested(dictionary_concept("eHealth/body_sites")), min_items=1)
    onset_date = DateTime(required=True)
    stage = Nested(StageSchema)
    evidences = List(Nested(EvidenceSchema))


# --- Observation ------------------------------------------------------------------------------

ObservationCodeSchema = dictionary_concept("eHealth/LOINC/observation_codes")


class ComponentSchema(StrictSchema):
    """A component of an observation: a code and its value."""

    code = Nested(ObservationCodeSchema)
    value_quantity = Nested(QuantitySchema)
    value_codeable_concept = Nested(CodeableConceptSchema)
    value_sampled_data = Nested(ValueSampledDataSchema)
    value_string = String()
    value_boolean = Boolean()
    value_range = Nested(ValueRangeSchema)
    value_ratio = Nested(ValueRatioSchema)
    # Swapped in the original (a time as a date-time, a date-time as a date), and so checked.
    value_time = DateTime()
    value_date_time = Date()
    value_period = Nested(period())
    interpretation = Nested(InterpretationSchema)
    reference_ranges = List(Nested(ReferenceRangeSchema))


class ObservationSchema(StrictSchema):
    """An observation made in the encounter."""

    id = UUIDString(required=True)
    primary_source = Boolean(required=True)
    report_origin = Nested(ReportOriginSchema)
    performer = Nested(PerformerSchema)
    status = dictionary_string("eHealth/observation_statuses", required=True)
    context = Nested(EncounterReferenceSchema, required=True)
    diagnostic_report = Nested(reference(resource_type("diagnostic_report")))
    based_on = List(
        Nested(reference(resource_type("service_request"), type_required=True)),
        min_items=1,
        max_items=1,
    )
    categories = List(
        Nested(dictionary_concept("eHealth/observation_categories")),
        required=True,
        min_items=1,
        max_items=1,
    )
    code = Nested(ObservationCodeSchema, required=True)
    effective_date_time = DateTime()
    effective_period = Nested(period(("start", "end")))
    issued = DateTime(required=True)
    interpretation = Nested(InterpretationSchema)
    comment = String()
    body_site = Nested(dictionary_concept("eHealth/body_sites", required_coding=False))
    method = Nested(dictionary_concept("eHealth/observation_methods", required_coding=False))
    value_quantity = Nested(QuantitySchema)
    value_codeable_concept = Nested(CodeableConceptSchema)
    value_sampled_data = Nested(ValueSampledDataSchema)
    value_string = String()
    value_boolean = Boolean()
    value_range = Nested(ValueRangeSchema)
    value_ratio = Nested(ValueRatioSchema)
    value_time = String(validate=[pattern("^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$")])
    value_date_time = DateTime()
    value_period = Nested(period())
    reference_ranges = List(Nested(ReferenceRangeSchema))
    components = List(Nested(ComponentSchema), min_items=1)
    reaction_on = Nested(reference(resource_type("immunization")))


# --- Immunization -----------------------------------------------------------------------------


class ExplanationSchema(StrictSchema):
    """Why a vaccine was given, or why not."""

    reasons = List(Nested(dictionary_concept("eHealth/reason_explanations")), min_items=1)
    reasons_not_given = List(
        Nested(dictionary_concept("eHealth/reason_not_given_explanations")), min_items=1
    )


class VaccinationProtocolSchema(StrictSchema):
    """The protocol a vaccination follows."""

    dose_sequence = Number()
    description = String(min_length=1)
    # No dictionary: the original describes the code without naming one.
    authority = Nested(codeable_concept("eHealth/vaccination_authorities", coding_max=1))
    series = String()
    series_doses = Number()
    target_diseases = List(
        Nested(dictionary_concept("eHealth/vaccination_target_diseases", coding_max=1)),
        min_items=1,
    )


class ImmunizationSchema(StrictSchema):
    """A vaccination given in the encounter, or not given."""

    id = UUIDString(required=True)
    status = dictionary_string("eHealth/immunization_statuses", required=True)
    not_given = Boolean(required=True)
    report_origin = Nested(ReportOriginSchema)
    vaccine_code = Nested(dictionary_concept("eHealth/vaccine_codes"), required=True)
    context = Nested(EncounterReferenceSchema, required=True)
    date = DateTime(required=True)
    performer = Nested(PerformerSchema)
    primary_source = Boolean(required=True)
    legal_entity = Nested(ReferenceSchema)
    manufacturer = String(min_length=1)
    lot_number = String()
    expiration_date = DateTime()
    site = Nested(dictionary_concept("eHealth/body_sites"))
    route = Nested(dictionary_concept("eHealth/vaccination_routes"))
    dose_quantity = Nested(QuantitySchema)
    explanation = Nested(ExplanationSchema)
    vaccination_protocols = List(Nested(VaccinationProtocolSchema), min_items=1)


# --- Allergy or intolerance -------------------------------------------------------------------


class AllergyIntoleranceSchema(StrictSchema):
    """An allergy or intolerance found in the encounter."""

    id = UUIDString(required=True)
    clinical_status = dictionary_string(
        "eHealth/allergy_intolerance_clinical_statuses", required=True, min_length=1
    )
    verification_status = dictionary_string(
        "eHealth/allergy_intolerance_verification_statuses", required=True, min_length=1
    )
    type = dictionary_string("eHealth/allergy_intolerance_types", required=True, min_length=1)
    category = dictionary_string(
        "eHealth/allergy_intolerance_categories", required=True, min_length=1
    )
    criticality = dictionary_string(
        "eHealth/allergy_intolerance_criticalities", required=True, min_length=1
    )
    context = Nested(reference(resource_type("encounter", coding_max=1)), required=True)
    code = Nested(
        dictionary_concept("eHealth/allergy_intolerance_codes", coding_max=1), required=True
    )
    onset_date_time = DateTime(required=True)
    asserted_date = DateTime(required=True)
    primary_source = Boolean(required=True)
    report_origin = Nested(ReportOriginSchema)
    asserter = Nested(PerformerSchema)
    last_occurrence = DateTime()


# --- Risk assessment --------------------------------------------------------------------------
# A risk assessment's codeable concepts differ from the others': `coding` is not required and
# may be empty, and only the `code` of a coding is required. Its references must say their
# type.


def _risk_concept(system: str, *, dictionary: str | None = None) -> type[Schema]:
    return codeable_concept(
        system,
        dictionary=dictionary,
        required_coding=False,
        coding_min=None,
        item_required=("code",),
    )


def _risk_reference(*codes: str) -> type[Schema]:
    identifier_type = resource_type(
        *codes, required_coding=False, coding_min=None, item_required=("code",)
    )
    return reference(identifier_type, type_required=True)


RiskQuantityRangeSchema = quantity_range(quantity(("value", "system", "code")))


class BasisSchema(StrictSchema):
    """What a risk assessment is based on."""

    references = List(Nested(_risk_reference("observation", "condition", "diagnostic_report")))
    text = String()


class PredictionSchema(StrictSchema):
    """An outcome a risk assessment predicts, and how likely it is."""

    outcome = Nested(
        _risk_concept(
            "eHealth/risk_assessment_outcomes", dictionary="eHealth/risk_assessment_outcomes"
        )
    )
    qualitative_risk = Nested(
        _risk_concept(
            "eHealth/risk_assessment_qualitative_risks",
            dictionary="eHealth/risk_assessment_qualitative_risks",
        )
    )
    relative_risk = Number()
    rationale = String()
    probability_decimal = Number()
    probability_range = Nested(RiskQuantityRangeSchema)
    when_period = Nested(period())
    when_range = Nested(RiskQuantityRangeSchema)


class RiskAssessmentSchema(StrictSchema):
    """A risk assessed in the encounter."""

    id = UUIDString(required=True)
    status = dictionary_string("eHealth/risk_assessment_statuses", required=True)
    method = Nested(
        _risk_concept(
            "eHealth/risk_assessment_methods", dictionary="eHealth/risk_assessment_methods"
        )
    )
    code = Nested(
        _risk_concept("eHealth/risk_assessment_codes", dictionary="eHealth/risk_assessment_codes"),
        required=True,
    )
    context = Nested(_risk_reference("encounter"), required=True)
    asserted_date = DateTime(required=True)
    primary_source = Boolean()
    basis = Nested(BasisSchema)
    predictions = List(Nested(PredictionSchema))
    mitigation = String()
    comment = String()
    performer = Nested(PerformerSchema)
    # No dictionary: two spaces after "Dictionary:" in the original's description.
    reason_codes = List(Nested(_risk_concept("eHealth/risk_assessment_reasons")))
    reason_references = List(
        Nested(_risk_reference("condition", "observation", "diagnostic_report"))
    )


# --- Device -----------------------------------------------------------------------------------


class DeviceSchema(StrictSchema):
    """A device the patient uses, recorded in the encounter."""

    id = UUIDString(required=True)
    status = dictionary_string("eHealth/device_statuses", required=True)
    asserted_date = DateTime(required=True)
    usage_period = Nested(period(), required=True)
    context = Nested(
        reference(
            resource_type(
                "encounter",
                required_coding=False,
                coding_min=None,
                coding_max=1,
                text_max=2000,
                item_required=("system", "code"),
            ),
            type_required=True,
        ),
        required=True,
    )
    primary_source = Boolean(required=True)
    # No dictionary: two spaces after "Dictionary:" in the original's description.
    type = Nested(
        codeable_concept(
            "eHealth/device_types",
            required_coding=False,
            coding_min=None,
            coding_max=1,
            text_max=2000,
        ),
        required=True,
    )
    lot_number = String(max_length=200)
    manufacturer = String(max_length=200)
    manufacture_date = DateTime()
    expiration_date = DateTime()
    model = String(max_length=200)
    version = String(max_length=200)
    note = String(max_length=2000)
    report_origin = Nested(ReportOriginSchema)
    asserter = Nested(PerformerSchema)


# --- Medication statement ---------------------------------------------------------------------


def _statement_reference(code: str) -> type[Schema]:
    identifier_type = resource_type(code, required_coding=False, coding_min=None, text_max=2000)
    return reference(identifier_type, type_required=True, uuid_value=True)


class MedicationStatementSchema(StrictSchema):
    """A medication the patient takes, recorded in the encounter."""

    id = UUIDString(required=True)
    based_on = Nested(_statement_reference("medication_request"))
    asserted_date = DateTime(required=True)
    # No dictionary: the original's description ends with a backtick.
    status = String(required=True)
    context = Nested(_statement_reference("encounter"), required=True)
    primary_source = Boolean(required=True)
    effective_period = String(max_length=2000)
    # Any system, and no dictionary (a backtick again).
    medication_code = Nested(
        codeable_concept(None, required_coding=False, coding_min=None, text_max=2000),
        required=True,
    )
    note = String(max_length=2000)
    dosage = String(max_length=2000)
    report_origin = Nested(ReportOriginSchema)
    asserter = Nested(PerformerSchema)


# --- Diagnostic report ------------------------------------------------------------------------


def _typed_reference(code: str, *, required_coding: bool = False) -> type[Schema]:
    """A diagnostic report's reference that must say its type (no minimum of codings)."""
    identifier_type = resource_type(code, required_coding=required_coding, coding_min=None)
    return reference(identifier_type, type_required=True)


ServiceTypeSchema = resource_type("service_group", "service")


class DiagnosticReportPerformerSchema(StrictSchema):
    """Who performed or interpreted a diagnostic report: a text, or a reference to an
    employee."""

    text = String(max_length=2000)
    reference = Nested(PerformerSchema)


class DiagnosticReportSchema(StrictSchema):
    """A diagnostic report made in the encounter."""

    id = UUIDString(required=True)
    based_on = Nested(_typed_reference("service_request"))
    status = String(required=True, validate=one_of(["final"]))
    # The original gives `items` as a list of one schema, which checks the first item only.
    category = FirstItemArray(
        Nested(
            codeable_concept(
                "eHealth/diagnostic_report_categories",
                dictionary="eHealth/diagnostic_report_categories",
                required_coding=False,
                coding_min=None,
                text_max=2000,
            )
        )
    )
    effective_date_time = DateTime()
    # Format "dateTime", unknown to the validator: strings, not checked as dates.
    effective_period = Nested(period(checked_format=False))
    issued = String(required=True)
    code = Nested(reference(ServiceTypeSchema), required=True)
    conclusion = String(max_length=2000)
    conclusion_code = Nested(
        codeable_concept(
            "eHealth/SNOMED/clinical_findings",
            dictionary="eHealth/SNOMED/clinical_findings",
            required_coding=False,
            coding_min=None,
            text_max=2000,
        )
    )
    recorded_by = Nested(_typed_reference("employee", required_coding=True), required=True)
    encounter = Nested(_typed_reference("encounter"), required=True)
    primary_source = Boolean(required=True)
    managing_organization = Nested(_typed_reference("legal_entity"))
    report_origin = Nested(ReportOriginSchema)
    performer = Nested(DiagnosticReportPerformerSchema)
    results_interpreter = Nested(DiagnosticReportPerformerSchema)


# --- Ours: medication administration and procedure --------------------------------------------


class DosageSchema(StrictSchema):
    """How much of a medication was given, and how (ours)."""

    text = String()
    dose = Nested(QuantitySchema)
    route = Nested(dictionary_concept("eHealth/vaccination_routes"))


class MedicationAdministrationSchema(StrictSchema):
    """A medication given in the encounter (ours: the original's package has none)."""

    id = UUIDString(required=True)
    status = String(required=True, validate=one_of(["completed"]))
    context = Nested(ConditionContextSchema, required=True)
    primary_source = Boolean(required=True)
    performer = Nested(PerformerSchema)
    medication = Nested(dictionary_concept("eHealth/medications"), required=True)
    effective_date_time = DateTime(required=True)
    dosage = Nested(DosageSchema)
    note = String()


class ProcedureSchema(StrictSchema):
    """A procedure performed in the encounter, or not (ours: the original's package has
    none)."""

    id = UUIDString(required=True)
    status = String(required=True, validate=one_of(["completed", "not_done"]))
    context = Nested(ConditionContextSchema, required=True)
    primary_source = Boolean(required=True)
    performer = Nested(PerformerSchema)
    code = Nested(dictionary_concept("eHealth/procedure_codes"), required=True)
    category = Nested(dictionary_concept("eHealth/procedure_categories"))
    performed_date_time = DateTime(required=True)
    outcome = Nested(dictionary_concept("eHealth/procedure_outcomes"))
    note = String()


# --- Cancellation: what differs -----------------------------------------------------------------

CancellationReasonSchema = dictionary_concept("eHealth/cancellation_reasons")


class CancelDiagnosisSchema(DiagnosisSchema):
    """A diagnosis of a cancelled encounter: its rank is not bounded."""

    rank = Number()


class CancelEncounterSchema(EncounterSchema):
    """The encounter of a cancelled package: why it is cancelled, its status any key of the
    dictionary and no longer required."""

    status = dictionary_string("eHealth/encounter_statuses")
    diagnoses = List(Nested(CancelDiagnosisSchema), required=True, min_items=1)
    supporting_info = List(
        Nested(
            reference(
                resource_type("observation", "diagnostic_report", text_nullable=True),
                display_value=True,
            )
        ),
        allow_none=True,
    )
    explanatory_letter = String(required=True)
    cancellation_reason = Nested(CancellationReasonSchema, required=True)


class CancelConditionSchema(ConditionSchema):
    """A condition of a cancelled package: its verification status not required."""

    verification_status = dictionary_string("Health/condition_verification_statuses")


class CancelImmunizationSchema(ImmunizationSchema):
    """An immunization of a cancelled package: its status not required."""

    status = dictionary_string("eHealth/immunization_statuses")


class CancelDiagnosticReportSchema(DiagnosticReportSchema):
    """A diagnostic report of a cancelled package: its status any string, its episode, and
    why it is cancelled."""

    # The original leaves these two open to other properties (no `additionalProperties`).
    origin_episode = Nested(
        reference(
            resource_type("episode", required_coding=False, coding_min=None),
            type_required=True,
            open_object=True,
        )
    )
    code = Nested(reference(ServiceTypeSchema, open_object=True), required=True)
    status = String(required=True)
    explanatory_letter = String()
    cancellation_reason = Nested(CancellationReasonSchema)


class CancelMedicationAdministrationSchema(MedicationAdministrationSchema):
    """A medication administration of a cancelled package: its status any string (ours)."""

    status = String(required=True)


class CancelProcedureSchema(ProcedureSchema):
    """A procedure of a cancelled package: its status any string (ours)."""

    status = String(required=True)


# --- The packages -----------------------------------------------------------------------------


def _entities(schema: type[Schema]) -> List:
    return List(Nested(schema), max_items=MAX_ENTITIES)


class PackageCreateContentSchema(StrictSchema):
    """The signed content of a package that creates an encounter and its entities."""

    encounter = Nested(EncounterSchema, required=True)
    conditions = _entities(ConditionSchema)
    observations = _entities(ObservationSchema)
    allergy_intolerances = _entities(AllergyIntoleranceSchema)
    immunizations = _entities(ImmunizationSchema)
    risk_assessments = _entities(RiskAssessmentSchema)
    devices = _entities(DeviceSchema)
    medication_statements = _entities(MedicationStatementSchema)
    medication_administrations = _entities(MedicationAdministrationSchema)
    diagnostic_reports = _entities(DiagnosticReportSchema)
    procedures = _entities(ProcedureSchema)


class PackageCancelContentSchema(StrictSchema):
    """The signed content of a package that cancels an encounter and its entities."""

    encounter = Nested(CancelEncounterSchema, required=True)
    conditions = _entities(CancelConditionSchema)
    observations = _entities(ObservationSchema)
    allergy_intolerances = _entities(AllergyIntoleranceSchema)
    immunizations = _entities(CancelImmunizationSchema)
    risk_assessments = _entities(RiskAssessmentSchema)
    devices = _entities(DeviceSchema)
    medication_statements = _entities(MedicationStatementSchema)
    medication_administrations = _entities(CancelMedicationAdministrationSchema)
    diagnostic_reports = _entities(CancelDiagnosticReportSchema)
    procedures = _entities(CancelProcedureSchema)


PACKAGE_CREATE_CONTENT = PackageCreateContentSchema()
PACKAGE_CANCEL_CONTENT = PackageCancelContentSchema()

# Each kind's item of a create package: what a package carries, and how a read renders it.
ENTITY_SCHEMAS: dict[EntityKind, type[Schema]] = {
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

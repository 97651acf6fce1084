"""The lists of a patient's entities: their query parameters, and the page they answer.

`GET /api/patients/{patient_id}/{collection}` and, in an episode's context,
`GET /api/patients/{patient_id}/episodes/{episode_id}/{collection}` take the filters of
eHealth's medical events service, kind by kind as its request schemas name them
(`conditions/condition_request.json`, `encounters/encounter_list.json`,
`episodes/episode_get.json`, ...): each parameter a string, a UUID (`format`) or a date
(`date`), and no other parameter (`schema`). Paging is Scrivener's, as the original pages:
`page` (from 1) and `page_size` (1 to 300, 50 unless given), both integers (`cast`, `number`).
`medication_administrations` and `procedures` are ours; they take their code, `encounter_id`
and `episode_id`. In an episode's context the episode's own parameter is the path's, and not a
query parameter.

The original takes `patient_id` and `patient_id_hash` in its encounters' schema too: they are
its path's (Phoenix merges the path into the parameters), so here they are the path's only.

A page renders each entity as `GET /api/patients/{patient_id}/{collection}/{id}` renders its
`data`, in `{"data": [...], "meta": {..., "type": "list"}, "paging": {"page_number",
"page_size", "total_entries", "total_pages"}}`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar, cast

from marshmallow import Schema, ValidationError, fields, post_load
from marshmallow.schema import SCHEMA

from schemas.entities import ENTITY_ENVELOPES, envelope_name
from schemas.envelope import Meta, MetaSchema
from schemas.rules import (
    INT64,
    UUID_PATTERN,
    Date,
    Integer,
    Rule,
    StrictSchema,
    String,
    UUIDString,
    number_range,
)
from service.domain.entities import (
    ALL_ENTITY_KINDS,
    ALLERGY_INTOLERANCE,
    CONDITION,
    DEVICE,
    DIAGNOSTIC_REPORT,
    ENCOUNTER,
    EPISODE,
    IMMUNIZATION,
    MEDICATION_ADMINISTRATION,
    MEDICATION_STATEMENT,
    OBSERVATION,
    PROCEDURE,
    READABLE_KINDS,
    RISK_ASSESSMENT,
    SERVICE_REQUEST,
    EntityKind,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 300
# A parameter given twice: which value was meant cannot be told (the rule of a key given twice
# in a body, `schemas.validation.DUPLICATED_KEY`).
REPEATED = Rule("unique", "the property is given more than once")

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
T = TypeVar("T")


class QueryInteger(Integer):
    """An integer of a query string: its decimal digits. Any other text is a `cast` ("Expected
    Integer but got String"), as a string in place of an integer is in a body."""

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kw: Any) -> Any:
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
            try:
                value = int(value)
            except ValueError:  # past Python's limit of digits: left a string, and a `cast`
                pass
        return super().deserialize(value, attr, data, **kw)


class QueryDate(Date):
    """`format: date` (rule `date`), loaded as the day it names."""

    # A String loading what its text names (see `rules.DateTime`: the OpenAPI document).
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> date:  # type: ignore[override]
        return date.fromisoformat(super()._deserialize(value, attr, data, **kw))


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What a list asks for: its filters by parameter name (strings, and days for the date
    bounds), and which page of which size."""

    filters: dict[str, Any]
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE


class ListQuerySchema(StrictSchema):
    """The paging parameters every list takes; each kind's filters are added to it."""

    page = QueryInteger(
        load_default=1,
        validate=number_range(minimum=1),
        metadata={"minimum": 1, "maximum": INT64[1], "description": "The page, from 1"},
    )
    page_size = QueryInteger(
        load_default=DEFAULT_PAGE_SIZE,
        validate=number_range(minimum=1, maximum=MAX_PAGE_SIZE),
        metadata={
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "description": f"Entities per page ({DEFAULT_PAGE_SIZE} unless given)",
        },
    )

    @post_load
    def a_list_query(self, data: dict[str, Any], **_: Any) -> ListQuery:
        page, page_size = data.pop("page"), data.pop("page_size")
        return ListQuery(filters=data, page=page, page_size=page_size)


# --- The filters of each kind ------------------------------------------------------------------


def _uuid(description: str) -> UUIDString:
    return UUIDString(metadata={"pattern": UUID_PATTERN, "description": description})


def _code(description: str) -> String:
    return String(metadata={"description": description})


def _days(stem: str, what: str) -> dict[str, QueryDate]:
    """`<stem>_from` and `<stem>_to`: inclusive days, in UTC."""
    return {
        f"{stem}_from": QueryDate(
            metadata={"format": "date", "description": f"{what} on this day (UTC) or later"}
        ),
        f"{stem}_to": QueryDate(
            metadata={"format": "date", "description": f"{what} on this day (UTC) or earlier"}
        ),
    }


def _of_package(episode_parameter: str = "episode_id") -> dict[str, UUIDString]:
    return {
        "encounter_id": _uuid("Recorded in this encounter"),
        episode_parameter: _uuid("Recorded in an encounter of this episode"),
    }


# Each kind's filters, by parameter name, as the original's request schema names them.
_PARAMETERS: dict[EntityKind, Callable[[], dict[str, fields.Field]]] = {
    ENCOUNTER: lambda: {
        **_days("date", "Encounters dated"),
        "episode_id": _uuid("Encounters of this episode"),
        "incoming_referral_id": _uuid("Encounters of this incoming referral"),
    },
    CONDITION: lambda: {
        "code": _code("A code of the condition's `code.coding`"),
        **_of_package(),
        **_days("onset_date", "Conditions with their onset"),
    },
    OBSERVATION: lambda: {
        "code": _code("A code of the observation's `code.coding`"),
        **_of_package(),
        **_days("issued", "Observations issued"),
        "diagnostic_report_id": _uuid("Observations of this diagnostic report"),
    },
    ALLERGY_INTOLERANCE: lambda: {
        "code": _code("A code of the allergy intolerance's `code.coding`"),
        **_of_package(),
        **_days("onset_date_time", "Allergy intolerances with their onset"),
    },
    IMMUNIZATION: lambda: {
        "vaccine_code": _code("A code of the immunization's `vaccine_code.coding`"),
        **_of_package(),
        **_days("date", "Immunizations dated"),
    },
    RISK_ASSESSMENT: lambda: {
        "code": _code("A code of the risk assessment's `code.coding`"),
        **_of_package(),
        **_days("asserted_date", "Risk assessments asserted"),
    },
    DEVICE: lambda: {
        "type": _code("A code of the device's `type.coding`"),
        **_of_package(),
        **_days("asserted_date", "Devices asserted"),
    },
    MEDICATION_STATEMENT: lambda: {
        "medication_code": _code("A code of the statement's `medication_code.coding`"),
        **_of_package(),
        **_days("asserted_date", "Medication statements asserted"),
    },
    MEDICATION_ADMINISTRATION: lambda: {
        "medication": _code("A code of the administration's `medication.coding`"),
        **_of_package(),
    },
    DIAGNOSTIC_REPORT: lambda: {
        "code": _code("The service of the report's `code` (`code.identifier.value`)"),
        **_of_package("context_episode_id"),
        "origin_episode_id": _uuid("Reports of this origin episode"),
        **_days("issued", "Reports issued"),
        "based_on": _uuid("Reports based on this service request"),
    },
    PROCEDURE: lambda: {
        "code": _code("A code of the procedure's `code.coding`"),
        **_of_package(),
    },
    EPISODE: lambda: {
        "code": _code("The episode's type (`type.code`)"),
        "status": _code("The episode's status"),
        "managing_organization_id": _uuid("Episodes managed by this legal entity"),
        **_days("period", "Episodes that started (`period.start`)"),
    },
    SERVICE_REQUEST: lambda: {
        "episode_id": _uuid("Service requests made in an encounter of this episode"),
        "status": _code("The service request's status"),
        "code": _uuid("The service or service group requested (`code.identifier.value`)"),
        "requester_legal_entity": _uuid("Service requests made by this legal entity"),
        "used_by_legal_entity": _uuid("Service requests used by this legal entity"),
    },
}

# The parameter a kind's list names its episode by; in an episode's context it is the path's.
EPISODE_PARAMETERS = {
    kind: "context_episode_id" if kind is DIAGNOSTIC_REPORT else "episode_id"
    for kind in ALL_ENTITY_KINDS
}


def query_parameters(kind: EntityKind, *, in_episode: bool = False) -> list[str]:
    """The names of a kind's filters (the paging parameters apart)."""
    names = list(_PARAMETERS[kind]())
    return [name for name in names if not (in_episode and name == EPISODE_PARAMETERS[kind])]


def _query_schema(kind: EntityKind, *, in_episode: bool = False) -> ListQuerySchema:
    filters = _PARAMETERS[kind]()
    if in_episode:
        del filters[EPISODE_PARAMETERS[kind]]
    stem = "".join(part.capitalize() for part in kind.entity.split("_"))
    name = f"{stem}{'EpisodeContext' if in_episode else ''}ListQuery"
    # `from_dict` makes a subclass of the class it is called on; marshmallow types it as
    # `type[Schema]`.
    return cast("type[ListQuerySchema]", ListQuerySchema.from_dict(filters, name=name))()


# Instances, by collection: a patient's lists, and the lists in an episode's context.
LIST_QUERIES = {kind.collection: _query_schema(kind) for kind in READABLE_KINDS}
EPISODE_LIST_QUERIES = {
    kind.collection: _query_schema(kind, in_episode=True) for kind in ALL_ENTITY_KINDS
}


def load_query_string(
    parameters: Iterable[tuple[str, str]], load: Callable[[dict[str, str]], T]
) -> T:
    """What `load` makes of a query string's (name, value) pairs, each name taken once; a
    `ValidationError` with every error at once (its `messages` for
    `schemas.validation.invalid_entries`): those `load` raises, and `REPEATED` on each name
    given more than once."""
    values: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in parameters:
        if name in values:
            repeated.append(name)
        else:
            values[name] = value
    try:
        loaded = load(values)
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {SCHEMA: error.messages}
    else:
        if not repeated:
            return loaded
        messages = {}
    for name in dict.fromkeys(repeated):
        rules = messages.setdefault(name, [])
        if isinstance(rules, list) and REPEATED not in rules:
            rules.append(REPEATED)
    raise ValidationError(messages)


def load_query(
    kind: EntityKind, parameters: Iterable[tuple[str, str]], *, in_episode: bool = False
) -> ListQuery:
    """The query of a list from its query string's (name, value) pairs; a `ValidationError`
    with every error at once (its `messages` for `schemas.validation.invalid_entries`)."""
    schema = (EPISODE_LIST_QUERIES if in_episode else LIST_QUERIES)[kind.collection]
    return load_query_string(parameters, schema.load)


# --- The page ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paging:
    """Scrivener's paging of the original: the page asked for, and how many there are."""

    page_number: int
    page_size: int
    total_entries: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total_entries / self.page_size)


class ListMetaSchema(MetaSchema):
    type = fields.Constant("list")


class ListPagingSchema(Schema):
    page_number = fields.Integer(required=True)
    page_size = fields.Integer(required=True)
    total_entries = fields.Integer(required=True)
    total_pages = fields.Integer(required=True)


def page_envelope_name(kind: EntityKind) -> str:
    """`ConditionPageEnvelope`: the name of a kind's page in the OpenAPI document."""
    return envelope_name(kind).removesuffix("Envelope") + "PageEnvelope"


def _page_envelope(kind: EntityKind) -> Schema:
    # Each item as the single read renders its `data`: the very schema of that envelope.
    item = ENTITY_ENVELOPES[kind.collection].fields["data"]
    assert isinstance(item, fields.Nested)
    return Schema.from_dict(
        {
            "data": fields.List(fields.Nested(item.nested), required=True),
            "meta": fields.Nested(ListMetaSchema, required=True),
            "paging": fields.Nested(ListPagingSchema, required=True),
        },
        name=page_envelope_name(kind),
    )()


PAGE_ENVELOPES = {kind.collection: _page_envelope(kind) for kind in READABLE_KINDS}


def dump_page(
    kind: EntityKind, documents: list[dict[str, Any]], paging: Paging, meta: Meta
) -> dict[str, Any]:
    return PAGE_ENVELOPES[kind.collection].dump({"data": documents, "meta": meta, "paging": paging})

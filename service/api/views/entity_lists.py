"""The read side an MIS uses: a patient's entities of one kind, a page at a time, and the
entities of one episode (scope `<entity>:read` of the kind listed).

- `GET /api/patients/{patient_id}/{collection}`: newest first, with the kind's filters.
- `GET /api/patients/{patient_id}/episodes/{episode_id}/{collection}` and
  `.../{collection}/{entity_id}`: what was recorded in that episode's encounters; 404
  "Episode not found" when the patient has no such episode.
"""

from __future__ import annotations

from aiohttp import web
from marshmallow import ValidationError

from schemas.entities import dump_entity
from schemas.entity_queries import ListQuery, Paging, dump_page, load_query
from schemas.envelope import Meta
from schemas.validation import invalid_entries
from service.api.errors import NotFound, RequestValidationFailed
from service.api.keys import ENTITY_READS, REQUEST_ID, REQUEST_URL
from service.api.middlewares import requires_scope
from service.api.requests import canonical_uuid, patient_id_of
from service.api.responses import conditional_json_response, entity_tag
from service.domain.entities import (
    ALL_ENTITY_KINDS,
    KINDS_BY_COLLECTION,
    READABLE_KINDS,
    EntityKind,
)
from service.domain.jobs import VALIDATION_FAILED_MESSAGE

# The `{collection}` of the routes: only what is listed there matches them (so that a path of
# another resource, `/episodes/{id}/actions/close`, is never taken for a list).
LISTED_COLLECTIONS = "|".join(kind.collection for kind in READABLE_KINDS)
EPISODE_COLLECTIONS = "|".join(kind.collection for kind in ALL_ENTITY_KINDS)


def _kind(request: web.Request) -> EntityKind:
    return KINDS_BY_COLLECTION[request.match_info["collection"]]


def _read_scope(request: web.Request) -> str:
    return f"{_kind(request).entity}:read"


def _query(request: web.Request, kind: EntityKind, *, in_episode: bool = False) -> ListQuery:
    try:
        return load_query(kind, request.query.items(), in_episode=in_episode)
    except ValidationError as error:
        invalid = invalid_entries(error.messages)
        raise RequestValidationFailed(VALIDATION_FAILED_MESSAGE, invalid=invalid) from None


async def _episode_of(request: web.Request, patient_id: str) -> str:
    episode_id = canonical_uuid(request.match_info["episode_id"], "Episode not found")
    if not await request.app[ENTITY_READS].has_episode(patient_id, episode_id):
        raise NotFound("Episode not found")
    return episode_id


async def _page(
    request: web.Request,
    kind: EntityKind,
    patient_id: str,
    query: ListQuery,
    episode_id: str | None = None,
) -> web.Response:
    documents, total = await request.app[ENTITY_READS].page(
        kind, patient_id, query.filters, query.page, query.page_size, episode_id=episode_id
    )
    paging = Paging(query.page, query.page_size, total)
    body = dump_page(kind, documents, paging, Meta(200, request[REQUEST_URL], request[REQUEST_ID]))
    # The tag of what the page says: its entities and how many there are.
    tag = entity_tag({"data": body["data"], "paging": body["paging"]})
    return conditional_json_response(request, body, tag=tag)


@requires_scope(_read_scope)
async def list_entities(request: web.Request) -> web.Response:
    """`GET /api/patients/{patient_id}/{collection}` (scope `<entity>:read`)."""
    kind = _kind(request)
    patient_id = patient_id_of(request)
    query = _query(request, kind)
    return await _page(request, kind, patient_id, query)


@requires_scope(_read_scope)
async def list_episode_entities(request: web.Request) -> web.Response:
    """`GET /api/patients/{patient_id}/episodes/{episode_id}/{collection}`."""
    kind = _kind(request)
    patient_id = patient_id_of(request)
    query = _query(request, kind, in_episode=True)
    episode_id = await _episode_of(request, patient_id)
    return await _page(request, kind, patient_id, query, episode_id)


@requires_scope(_read_scope)
async def get_episode_entity(request: web.Request) -> web.Response:
    """`GET /api/patients/{patient_id}/episodes/{episode_id}/{collection}/{entity_id}`."""
    kind = _kind(request)
    patient_id = patient_id_of(request)
    episode_id = await _episode_of(request, patient_id)
    entity_id = canonical_uuid(request.match_info["entity_id"], f"{kind.title} not found")
    reads = request.app[ENTITY_READS]
    document = await reads.get_in_episode(kind, patient_id, episode_id, entity_id)
    if document is None:
        raise NotFound(f"{kind.title} not found")
    body = dump_entity(kind, document, request[REQUEST_URL], request[REQUEST_ID])
    return conditional_json_response(request, body)

"""Where a processed job's links lead: one entity of one patient."""

from __future__ import annotations

from aiohttp import web

from schemas.entities import dump_entity
from service.api.errors import NotFound
from service.api.keys import ENTITY_STORE, REQUEST_ID, REQUEST_URL
from service.api.middlewares import requires_scope
from service.api.requests import canonical_uuid, patient_id_of
from service.api.responses import conditional_json_response
from service.domain.entities import KINDS_BY_COLLECTION


def _entity_scope(request: web.Request) -> str:
    kind = KINDS_BY_COLLECTION.get(request.match_info["collection"])
    if kind is None:
        raise NotFound("Not found")
    return f"{kind.entity}:read"


@requires_scope(_entity_scope)
async def get_entity(request: web.Request) -> web.Response:
    """`GET /api/patients/{patient_id}/{collection}/{entity_id}` (scope `<entity>:read`)."""
    kind = KINDS_BY_COLLECTION[request.match_info["collection"]]
    patient_id = patient_id_of(request)
    entity_id = canonical_uuid(request.match_info["entity_id"], "Not found")
    document = await request.app[ENTITY_STORE].get(kind, patient_id, entity_id)
    if document is None:
        raise NotFound(f"{kind.title} not found")
    body = dump_entity(kind, document, request[REQUEST_URL], request[REQUEST_ID])
    return conditional_json_response(request, body)

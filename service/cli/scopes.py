"""Every scope the service checks, from the code that checks them: what `medevents token
--demo` grants."""

from __future__ import annotations

from aiohttp import web

from service.api.middlewares import _SCOPE_ATTRIBUTE
from service.api.routes import setup_routes
from service.domain.entities import KINDS_BY_COLLECTION
from service.usecases.job_types import JobTypeRegistry


def known_scopes(registry: JobTypeRegistry) -> list[str]:
    """Sorted: the scopes the API's routes require by name (`job:read`, each job type's write
    scope, `webhook:write`, `jobs:admin`), each job type's (also those submitted over AMQP
    only), and the read scope of every kind of entity the reads serve (the routes that take
    theirs from the path: `<entity>:read`)."""
    app = web.Application()
    setup_routes(app, registry)
    named = {
        scope
        for route in app.router.routes()
        if isinstance(scope := getattr(route.handler, _SCOPE_ATTRIBUTE, None), str)
    }
    job_types = {registry.get(name) for name in registry.names}
    submitted = {job_type.required_scope for job_type in job_types if job_type is not None}
    reads = {f"{kind.entity}:read" for kind in KINDS_BY_COLLECTION.values()}
    return sorted(named | submitted | reads)

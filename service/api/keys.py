"""Typed keys of what the app and each request carry."""

from __future__ import annotations

from aiohttp import web

from service.api.auth import Authenticator
from service.bootstrap import Services
from service.config import Settings
from service.domain.principal import Principal
from service.storage.entities import EntityStore
from service.storage.entity_reads import EntityReads
from service.usecases.jobs import JobService
from service.usecases.operations import OperatorService

# What the bootstrap built; the app closes it at its cleanup.
SERVICES = web.AppKey("services", Services)
SETTINGS = web.AppKey("settings", Settings)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ENTITY_STORE = web.AppKey("entity_store", EntityStore)
ENTITY_READS = web.AppKey("entity_reads", EntityReads)
JOB_SERVICE = web.AppKey("job_service", JobService)
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)
OPERATOR_SERVICE = web.AppKey("operator_service", OperatorService)

REQUEST_ID = web.RequestKey("request_id", str)
# `meta.url`: the URL the client asked for, computed once (see middlewares.request_url).
REQUEST_URL = web.RequestKey("request_url", str)
PRINCIPAL = web.RequestKey("principal", Principal)
# Set by a request that waits (long poll): its latency is measured apart.
LONG_POLL = web.RequestKey("long_poll", bool)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]

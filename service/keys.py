"""Typed keys of what the app and each request carry."""

from __future__ import annotations

from aiohttp import web

from service.auth import Authenticator, Principal
from service.config import Settings
from service.job_service import JobService

SETTINGS = web.AppKey("settings", Settings)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
JOB_SERVICE = web.AppKey("job_service", JobService)

# Request keys (aiohttp has no typed request keys; these names are the one place they live).
REQUEST_ID = "medevents.request_id"
PRINCIPAL = "medevents.principal"


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]

"""Typed keys of what the app and each request carry."""

from __future__ import annotations

from aiohttp import web

from service.auth import Authenticator, Principal
from service.config import Settings
from service.job_service import JobService

SETTINGS = web.AppKey("settings", Settings)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
JOB_SERVICE = web.AppKey("job_service", JobService)

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]

"""Every route of the API, in one place."""

from __future__ import annotations

from aiohttp import web

from service import views


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/jobs/{job_id}", views.get_job, name="job")

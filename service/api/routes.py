"""Every route of the API, in one place."""

from __future__ import annotations

from aiohttp import web

from service.api.views import admin as admin_views
from service.api.views import jobs as views


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health/live", views.live, name="live")
    app.router.add_get("/health/ready", views.ready, name="ready")
    app.router.add_get("/metrics", views.metrics, name="metrics")
    app.router.add_get("/api/openapi.json", views.openapi, name="openapi")
    app.router.add_get("/api/jobs/{job_id}", views.get_job, name="job")
    package = "/api/patients/{patient_id}/encounter_package"
    app.router.add_post(package, views.submit_encounter_package, name="encounter_package")
    app.router.add_patch(package, views.cancel_encounter_package)
    # Where a processed job's links lead.
    app.router.add_get(
        "/api/patients/{patient_id}/{collection}/{entity_id}", views.get_entity, name="entity"
    )
    # Operators: the dashboard and the endpoints it reads (scope `jobs:admin`).
    app.router.add_get("/dashboard", admin_views.dashboard, name="dashboard")
    app.router.add_get("/dashboard/{name}", admin_views.dashboard_asset)
    app.router.add_get("/api/admin/jobs", admin_views.list_jobs, name="admin_jobs")
    app.router.add_get("/api/admin/jobs/{job_id}", admin_views.get_job, name="admin_job")
    app.router.add_get("/api/admin/stats", admin_views.stats, name="admin_stats")
    app.router.add_post("/api/admin/dead-letters/replay", admin_views.replay_dead_letters)

"""Every route of the API, in one place."""

from __future__ import annotations

from aiohttp import web

from service import views


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

"""Every route of the API, in one place; the submissions' come from the job types."""

from __future__ import annotations

from aiohttp import web

from service.api.views import admin, entities, entity_lists, health, jobs, submissions, webhooks
from service.usecases.job_types import JobTypeRegistry


def setup_routes(app: web.Application, registry: JobTypeRegistry) -> None:
    app.router.add_get("/health/live", health.live, name="live")
    app.router.add_get("/health/ready", health.ready, name="ready")
    app.router.add_get("/metrics", health.metrics, name="metrics")
    app.router.add_get("/api/openapi.json", health.openapi, name="openapi")
    app.router.add_get("/api/jobs", jobs.list_jobs, name="jobs")
    app.router.add_get("/api/jobs/{job_id}", jobs.get_job, name="job")
    app.router.add_post("/api/jobs/{job_id}/actions/cancel", jobs.cancel_job, name="job_cancel")
    # Each job type submitted over HTTP, where it says (`JobType.http`).
    for job_type in registry.submitted_over_http:
        assert job_type.http is not None
        handler = submissions.submission_handler(job_type)
        app.router.add_route(job_type.http.method, job_type.http.path, handler)
    # A patient's lists (one segment after the patient; the single read has two) and what was
    # recorded in one episode (three and four). Only the listed collections match.
    listed, in_episode = entity_lists.LISTED_COLLECTIONS, entity_lists.EPISODE_COLLECTIONS
    app.router.add_get(
        f"/api/patients/{{patient_id}}/{{collection:{listed}}}",
        entity_lists.list_entities,
        name="entities",
    )
    app.router.add_get(
        f"/api/patients/{{patient_id}}/episodes/{{episode_id}}/{{collection:{in_episode}}}",
        entity_lists.list_episode_entities,
        name="episode_entities",
    )
    app.router.add_get(
        f"/api/patients/{{patient_id}}/episodes/{{episode_id}}/{{collection:{in_episode}}}"
        "/{entity_id}",
        entity_lists.get_episode_entity,
        name="episode_entity",
    )
    # Where a processed job's links lead.
    app.router.add_get(
        "/api/patients/{patient_id}/{collection}/{entity_id}", entities.get_entity, name="entity"
    )
    # Operators: the dashboard and the endpoints it reads (scope `jobs:admin`).
    app.router.add_get("/dashboard", admin.dashboard, name="dashboard")
    app.router.add_get("/dashboard/{name}", admin.dashboard_asset)
    app.router.add_get("/api/admin/jobs", admin.list_jobs, name="admin_jobs")
    app.router.add_get("/api/admin/jobs/{job_id}", admin.get_job, name="admin_job")
    app.router.add_get("/api/admin/stats", admin.stats, name="admin_stats")
    app.router.add_post("/api/admin/dead-letters/replay", admin.replay_dead_letters)
    app.router.add_get("/api/admin/webhooks/dead-letters", admin.webhook_dead_letters)
    app.router.add_post(
        "/api/admin/webhooks/dead-letters/replay", admin.replay_webhook_dead_letters
    )
    # A client's webhook endpoints (scope `webhook:write`, docs/webhooks.md).
    app.router.add_post("/api/webhooks", webhooks.create_webhook, name="webhooks")
    app.router.add_get("/api/webhooks", webhooks.list_webhooks)
    app.router.add_get("/api/webhooks/{endpoint_id}", webhooks.get_webhook, name="webhook")
    app.router.add_delete("/api/webhooks/{endpoint_id}", webhooks.delete_webhook)
    app.router.add_post("/api/webhooks/{endpoint_id}/actions/rotate-secret", webhooks.rotate_secret)
    app.router.add_get("/api/webhooks/{endpoint_id}/deliveries", webhooks.list_deliveries)

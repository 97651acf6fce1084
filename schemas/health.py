"""`/health/live` and `/health/ready`, in the same envelope as everything else."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from schemas.envelope import Meta, envelope_schema


class HealthSchema(Schema):
    status = fields.String(required=True)  # "ok" or "unavailable"
    # Per dependency, "ok" or "unavailable" (readiness only).
    checks = fields.Dict(keys=fields.String(), values=fields.String())


HEALTH = envelope_schema(HealthSchema, "HealthEnvelope")


def dump_health(
    checks: dict[str, bool] | None, url: str, request_id: str
) -> tuple[int, dict[str, Any]]:
    ready = checks is None or all(checks.values())
    status = 200 if ready else 503
    data: dict[str, Any] = {"status": "ok" if ready else "unavailable"}
    if checks is not None:
        data["checks"] = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    return status, HEALTH.dump({"data": data, "meta": Meta(status, url, request_id)})

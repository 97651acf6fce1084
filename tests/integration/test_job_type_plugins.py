"""A job type is one declaration: given to the bootstrap's registry, it is routed over HTTP,
documented in OpenAPI, checked against its scope and its schema, and processed by the
consumer, with nothing else written for it."""

from __future__ import annotations

from consumers.processors import builtin_registry
from service.api.app import create_app
from service.bootstrap import Services
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, poll
from tests.note_job_type import NOTE

URL = f"/api/patients/{ACTIVE_PATIENT}/notes"


async def test_a_declared_job_type_is_submitted_over_http_and_processed(
    aiohttp_client, settings, db, start_consumer
) -> None:
    registry = builtin_registry().with_types(NOTE)
    api = await aiohttp_client(create_app(Services(settings, registry)))
    await start_consumer(registry)
    writer = bearer(scopes=("job:read", "note:write"))

    response = await api.post(URL, json={"text": "seen on the ward"}, headers=writer)
    assert response.status == 202
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    polled, body = await poll(api, job_id, writer)
    assert polled.status == 303
    assert body["data"]["links"] == [
        {"entity": "note", "href": f"/api/patients/{ACTIVE_PATIENT}/notes/{job_id}"}
    ]
    assert (await db["notes"].find_one({"_id": job_id}))["text"] == "seen on the ward"

    # Its scope and its schema, stated once, are checked at the POST, before any job.
    reader = bearer(scopes=("job:read",))
    refused = await api.post(URL, json={"text": "x"}, headers=reader)
    assert refused.status == 403
    assert (await refused.json())["error"]["message"].endswith("Missing allowances: note:write")
    jobs = await db["jobs"].count_documents({})
    response = await api.post(URL, json={"text": "x" * 101}, headers=writer)
    body = await response.json()
    assert response.status == 422 and "Location" not in response.headers
    assert body["error"]["type"] == "validation_failed"
    assert body["error"]["invalid"][0]["entry"] == "$.text"
    assert body["error"]["invalid"][0]["rules"][0]["rule"] == "length"
    assert await db["jobs"].count_documents({}) == jobs

    document = await (await api.get("/api/openapi.json")).json()
    assert document["paths"]["/api/patients/{patient_id}/notes"]["post"]["summary"] == (
        "Write a note (scope note:write)"
    )

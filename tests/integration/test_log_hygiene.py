"""No token and no package content in any log line, through a whole submission."""

from __future__ import annotations

from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, poll

SECRET_VALUE = "Patient-confided-detail-7f3a"


async def test_logs_hold_no_token_and_no_package_content(api, start_consumer, captured_logs):
    await start_consumer()
    write = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
    token = write["Authorization"].split()[1]
    data = example("encounter_package")["data"]
    data["procedures"][0]["note"] = SECRET_VALUE
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    accepted = await (await api.post(url, json=data, headers=write)).json()
    job_id = accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    await poll(api, job_id, write)
    await api.get("/api/jobs/x", headers={"Authorization": f"Bearer {token}x"})  # bad signature

    logged = captured_logs.stream.getvalue()
    assert captured_logs.events("job_finished"), "the flow was logged at all"
    assert token not in logged and token[:40] not in logged
    assert SECRET_VALUE not in logged
    assert data["encounter"]["period"]["start"] not in logged

"""No token and no package content in any log line, through a whole submission."""

from __future__ import annotations

from service.signatures import encode_unsigned
from tests.conftest import bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, example, package_content, poll

SECRET_VALUE = "Patient-confided-detail-7f3a"


async def test_logs_hold_no_token_and_no_package_content(api, start_consumer, captured_logs):
    await start_consumer()
    write = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))
    token = write["Authorization"].split()[1]
    data = example("encounter_package")["data"]
    content = package_content({"data": data})
    content["procedures"][0]["note"] = SECRET_VALUE
    data["signed_data"] = encode_unsigned(content)
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    accepted = await (await api.post(url, json=data, headers=write)).json()
    job_id = accepted["data"]["links"][0]["href"].rsplit("/", 1)[-1]
    _, body = await poll(api, job_id, write)
    assert body["data"]["status"] == "processed", body
    await api.get("/api/jobs/x", headers={"Authorization": f"Bearer {token}x"})  # bad signature

    logged = captured_logs.stream.getvalue()
    assert captured_logs.events("job_finished"), "the flow was logged at all"
    assert token not in logged and token[:40] not in logged
    # Neither the signed data, whole or in part, nor any value of the content it carries.
    signed_data = data["signed_data"]
    assert signed_data not in logged
    assert not any(
        signed_data[start : start + 40] in logged for start in range(0, len(signed_data), 40)
    )
    assert SECRET_VALUE not in logged
    assert content["encounter"]["date"] not in logged
    assert content["procedures"][0]["performed_date_time"] not in logged
    assert content["observations"][0]["code"]["text"] not in logged
    assert data["visit"]["period"]["start"] not in logged

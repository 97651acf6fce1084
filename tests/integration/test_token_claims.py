"""What a signed token may claim: time claims that are JSON numbers, and an identity no longer
than a submission can carry (`schemas.submission`'s limits). Each is refused at once with 401
in the error envelope, never accepted to fail later in the consumer."""

from __future__ import annotations

import time

import jwt
import orjson
import pytest

from schemas.submission import MAX_CLIENT_ID_LENGTH, MAX_SCOPE_LENGTH, MAX_USER_ID_LENGTH
from tests.conftest import TEST_SECRET
from tests.harness import ACTIVE_PATIENT, example
from tests.integration.conftest import app_for
from tests.integration.test_request_errors import assert_error_envelope, claims, token_with

SUBMIT_URL = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"


def scope_of_length(length: int) -> str:
    """`job:read encounter:write` and one more scope: `length` characters, sorted and joined."""
    known = "encounter:write job:read"
    return f"{known} {'z' * (length - len(known) - 1)}"


async def refusal(api, headers: dict) -> str:
    response = await api.get("/api/jobs/some-job", headers=headers)
    body = await response.json()
    assert_error_envelope(response, body, 401, "access_denied")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body["error"]["message"]


# Identity -------------------------------------------------------------------------------------

TOO_LONG = {
    "sub": (
        {"sub": "u" * 300},
        f"The access token's sub claim is longer than {MAX_USER_ID_LENGTH} characters",
    ),
    "client_id": (
        {"client_id": "c" * 300},
        f"The access token's client_id claim is longer than {MAX_CLIENT_ID_LENGTH} characters",
    ),
    "scope": (
        {"scope": scope_of_length(MAX_SCOPE_LENGTH + 1)},
        f"The access token's scope claim is longer than {MAX_SCOPE_LENGTH} characters",
    ),
}


@pytest.mark.parametrize(("overrides", "message"), TOO_LONG.values(), ids=TOO_LONG)
async def test_an_identity_longer_than_a_submission_carries_is_refused(
    api, overrides, message
) -> None:
    assert await refusal(api, token_with(claims(**overrides))) == message


async def test_an_identity_at_the_limits_is_accepted(api) -> None:
    at_limits = claims(
        sub="u" * MAX_USER_ID_LENGTH,
        client_id="c" * MAX_CLIENT_ID_LENGTH,
        scope=scope_of_length(MAX_SCOPE_LENGTH),
    )
    response = await api.get("/api/jobs/some-job", headers=token_with(at_limits))
    assert response.status == 404  # past authorization: the job is unknown


async def submit(api, token_claims: dict) -> tuple[object, dict]:
    headers = token_with({**token_claims, "scope": "job:read encounter:write"})
    response = await api.post(
        SUBMIT_URL, json=example("encounter_package")["data"], headers=headers
    )
    return response, await response.json()


async def test_a_submission_with_a_too_long_identity_gets_no_job(api, db, patients) -> None:
    """The reported path: a 202, then a job failed 422 at `$.requested_by.user_id`."""
    response, body = await submit(api, claims(sub="u" * 300))
    assert_error_envelope(response, body, 401, "access_denied")
    assert body["error"]["message"] == TOO_LONG["sub"][1]
    assert await db["jobs"].count_documents({}) == 0
    # The same request from an identity at the limit is taken.
    response, body = await submit(api, claims(sub="u" * MAX_USER_ID_LENGTH))
    assert response.status == 202, body


async def test_a_lone_surrogate_in_the_identity_is_refused(api, db, patients) -> None:
    """`"\\ud800"` in a token's JSON decodes to text that orjson and MongoDB cannot encode."""
    message = await refusal(api, token_with(claims(sub="user-\ud800")))
    assert message == "The access token's sub claim is not valid text"
    response, body = await submit(api, claims(sub="user-\ud800"))
    assert_error_envelope(response, body, 401, "access_denied")
    assert await db["jobs"].count_documents({}) == 0


GATEWAY_TOO_LONG = {
    "x-consumer-id": (
        {"x-consumer-id": "u" * 300},
        f"The gateway's x-consumer-id is longer than {MAX_USER_ID_LENGTH} characters",
    ),
    "client_id": (
        {"x-consumer-metadata": orjson.dumps({"client_id": "c" * 300}).decode()},
        f"The gateway's client_id is longer than {MAX_CLIENT_ID_LENGTH} characters",
    ),
    "scope": (
        {"x-consumer-scope": scope_of_length(MAX_SCOPE_LENGTH + 1)},
        f"The gateway's scope is longer than {MAX_SCOPE_LENGTH} characters",
    ),
}


@pytest.mark.parametrize(("overrides", "message"), GATEWAY_TOO_LONG.values(), ids=GATEWAY_TOO_LONG)
async def test_the_gateway_identity_has_the_same_limits(
    aiohttp_client, settings, overrides, message
) -> None:
    client = await aiohttp_client(app_for(settings.with_changes(auth_mode="gateway")))
    consumer = {
        "x-consumer-id": "u" * MAX_USER_ID_LENGTH,
        "x-consumer-metadata": orjson.dumps({"client_id": "c" * MAX_CLIENT_ID_LENGTH}).decode(),
        "x-consumer-scope": scope_of_length(MAX_SCOPE_LENGTH),
    }
    at_limits = await client.get("/api/jobs/some-job", headers=consumer)
    assert at_limits.status == 404
    assert await refusal(client, {**consumer, **overrides}) == message


# Time claims ----------------------------------------------------------------------------------


def later() -> int:
    return int(time.time()) + 600


NOT_NUMBERS = {
    "exp as a string": ("exp", lambda: str(later())),
    "exp far ahead as a string": ("exp", lambda: "9999999999"),
    "exp true": ("exp", lambda: True),
    "exp as a list": ("exp", lambda: [later()]),
    "exp infinite": ("exp", lambda: float("inf")),
    "nbf as a string": ("nbf", lambda: "0"),
    "nbf false": ("nbf", lambda: False),
    "nbf null": ("nbf", lambda: None),
    "iat as a string": ("iat", lambda: str(int(time.time()))),
    "iat true": ("iat", lambda: True),
    "iat NaN": ("iat", lambda: float("nan")),
}


@pytest.mark.parametrize(("claim", "value"), NOT_NUMBERS.values(), ids=NOT_NUMBERS)
async def test_time_claims_must_be_numbers(api, claim, value) -> None:
    payload = {**claims(), claim: value()}
    token = jwt.encode(payload, TEST_SECRET, algorithm="HS256")
    message = await refusal(api, {"Authorization": f"Bearer {token}"})
    assert message == f"The access token's {claim} claim must be a number"


async def test_numeric_time_claims_are_accepted(api) -> None:
    now = time.time()
    payload = claims(exp=now + 600.5, nbf=int(now) - 5, iat=now - 1.25)
    response = await api.get("/api/jobs/some-job", headers=token_with(payload))
    assert response.status == 404  # past authorization: the job is unknown


async def test_time_claims_are_still_checked_against_the_clock(api) -> None:
    now = int(time.time())
    assert await refusal(api, token_with(claims(exp=now - 60))) == "The access token has expired"
    for early in ({"nbf": now + 60}, {"iat": now + 60}):
        message = await refusal(api, token_with(claims(**early)))
        assert message == "The access token is not yet valid"
    # Within the 10 s the clocks may differ by.
    response = await api.get(
        "/api/jobs/some-job", headers=token_with(claims(exp=now - 5, nbf=now + 5, iat=now + 5))
    )
    assert response.status == 404


async def test_a_string_exp_is_refused_on_submission_too(api, db, patients) -> None:
    payload = {**claims(scope="job:read encounter:write"), "exp": "9999999999"}
    headers = {"Authorization": f"Bearer {jwt.encode(payload, TEST_SECRET, algorithm='HS256')}"}
    response = await api.post(
        SUBMIT_URL, json=example("encounter_package")["data"], headers=headers
    )
    body = await response.json()
    assert_error_envelope(response, body, 401, "access_denied")
    assert body["error"]["message"] == "The access token's exp claim must be a number"
    assert await db["jobs"].count_documents({}) == 0

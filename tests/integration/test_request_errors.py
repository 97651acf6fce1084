"""Errors of the request itself: authorization, unknown and hostile ids, wrong method, body
limit, unexpected exceptions. Each in the error envelope, with a request id."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.api.auth import mint_token
from tests.conftest import CLIENT_ID, OTHER_CLIENT_ID, TEST_SECRET, bearer, new_job
from tests.integration.conftest import app_for

SCOPE_MESSAGE = "Your scope does not allow to access this resource. Missing allowances: job:read"


def assert_error_envelope(response, body: dict, status: int, error_type: str) -> None:
    assert response.status == status
    assert response.content_type == "application/json"
    assert set(body) == {"error", "meta"}
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["meta"]["code"] == status
    assert body["meta"]["type"] == "object"
    assert body["meta"]["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in str(body)


def token_with(claims: dict, key: object = TEST_SECRET, algorithm: str = "HS256") -> dict:
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm=algorithm)}"}


def claims(**overrides) -> dict:
    """Claims of a valid token, made now: `exp` 10 minutes ahead. A claim set to None is left
    out."""
    now = int(time.time())
    values = {"sub": "user-1", "client_id": CLIENT_ID, "scope": "job:read", "exp": now + 600}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


INVALID = "The access token is invalid"
BAD_SCHEME = "The Authorization header must be: Bearer <token>"
OTHER_SECRET = "another-secret-of-sufficient-length-000000"

# Each case: how to make the headers (called inside the test, so that no token ages while the
# suite runs: a token made at import would be refused as expired whatever else is wrong with
# it) and the exact message it must be refused with.
UNAUTHORIZED_HEADERS = {
    "no token": (dict, "Missing header Authorization"),
    "empty bearer": (lambda: {"Authorization": "Bearer "}, BAD_SCHEME),
    "basic scheme": (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, BAD_SCHEME),
    "malformed": (lambda: {"Authorization": "Bearer not.a.jwt"}, INVALID),
    "garbage": (lambda: {"Authorization": "Bearer ÿÿÿ"}, INVALID),
    "bad signature": (lambda: token_with(claims(), key=OTHER_SECRET), INVALID),
    "alg none": (lambda: token_with(claims(), key=None, algorithm="none"), INVALID),
    "expired": (
        lambda: token_with(claims(exp=int(time.time()) - 3600)),
        "The access token has expired",
    ),
    "not yet valid": (
        lambda: token_with(claims(nbf=int(time.time()) + 3600)),
        "The access token is not yet valid",
    ),
    "no exp": (lambda: token_with(claims(exp=None)), "The access token has no exp claim"),
    "no client_id": (
        lambda: token_with(claims(client_id=None)),
        "The access token has no client_id claim",
    ),
    "client_id not a string": (
        lambda: token_with(claims(client_id=42)),
        "The access token's client_id claim must be a non-empty string",
    ),
}


@pytest.mark.parametrize(
    ("make_headers", "message"), UNAUTHORIZED_HEADERS.values(), ids=UNAUTHORIZED_HEADERS
)
async def test_unauthorized(api, make_headers, message) -> None:
    response = await api.get("/api/jobs/some-job", headers=make_headers())
    body = await response.json()
    assert_error_envelope(response, body, 401, "access_denied")
    assert body["error"]["message"] == message
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_token_the_refusals_are_made_from_is_accepted(api) -> None:
    """What each case above changes is what is refused: the same token unchanged passes."""
    response = await api.get("/api/jobs/some-job", headers=token_with(claims()))
    assert_error_envelope(response, await response.json(), 404, "not_found")


async def test_missing_scope_is_forbidden_with_the_documented_message(api) -> None:
    response = await api.get("/api/jobs/some-job", headers=bearer(scopes=("encounter:write",)))
    body = await response.json()
    assert_error_envelope(response, body, 403, "forbidden")
    assert body["error"]["message"] == SCOPE_MESSAGE


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/unknown-job",
        "/api/jobs/..%2Fx",
        "/api/jobs/%2E%2E%2Fx",
        "/api/jobs/%24ne",
        "/api/jobs/%7B%22%24gt%22%3A%22%22%7D",
        "/api/jobs/" + "a" * 65,
        "/api/jobs/a%00b",
        "/api/jobs/job%20id",
        "/api/jobs/",
        "/api/x",
    ],
)
async def test_unknown_or_hostile_ids_are_not_found(api, path) -> None:
    response = await api.get(path, headers=bearer())
    assert_error_envelope(response, await response.json(), 404, "not_found")


async def test_a_job_of_another_client_is_not_found(api, store) -> None:
    job, _ = await store.create_pending(new_job(client_id=OTHER_CLIENT_ID))
    response = await api.get(f"/api/jobs/{job['_id']}", headers=bearer(client_id=CLIENT_ID))
    body = await response.json()
    assert_error_envelope(response, body, 404, "not_found")
    unknown = await api.get("/api/jobs/no-such-job", headers=bearer(client_id=CLIENT_ID))
    assert body["error"] == (await unknown.json())["error"]
    mine = await api.get(f"/api/jobs/{job['_id']}", headers=bearer(client_id=OTHER_CLIENT_ID))
    assert mine.status == 200


async def test_a_64_character_id_is_looked_up(api, store) -> None:
    job, _ = await store.create_pending(new_job(job_id="a" * 64))
    response = await api.get(f"/api/jobs/{job['_id']}", headers=bearer())
    assert response.status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_other_methods_on_a_job_are_not_allowed(api, method) -> None:
    response = await api.request(method, "/api/jobs/some-job", headers=bearer())
    assert_error_envelope(response, await response.json(), 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_a_body_over_the_limit_is_refused(api, settings) -> None:
    body = b"x" * (settings.max_request_bytes + 1)
    response = await api.post("/api/jobs/some-job", data=body, headers=bearer())
    assert_error_envelope(response, await response.json(), 413, "request_entity_too_large")


async def test_unexpected_exception_is_500_without_traceback(
    aiohttp_client, settings, captured_logs
):
    app = app_for(settings)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/api/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/api/broken")
    body = await response.json()
    assert_error_envelope(response, body, 500, "internal_error")
    assert "secret internals" not in str(body)
    failures = captured_logs.events("request_failed")
    assert failures and failures[0]["request_id"] == response.headers["x-request-id"]
    assert "RuntimeError" in failures[0]["exception"]


async def test_request_id_is_taken_when_sane_and_bound_into_log_lines(api, captured_logs):
    response = await api.get(
        "/api/jobs/unknown", headers={**bearer(), "x-request-id": "req-abc.123"}
    )
    assert response.headers["x-request-id"] == "req-abc.123"
    assert (await response.json())["meta"]["request_id"] == "req-abc.123"
    finished = captured_logs.events("request_finished")
    assert [line["request_id"] for line in finished] == ["req-abc.123"]
    assert finished[0]["status"] == 404


@pytest.mark.parametrize("given", ["has space", "x" * 129, "a\\b", "<script>", "ключ"])
async def test_an_insane_request_id_is_replaced(api, given) -> None:
    response = await api.get("/api/jobs/unknown", headers={**bearer(), "x-request-id": given})
    assert response.headers["x-request-id"] != given
    assert (await response.json())["meta"]["request_id"] == response.headers["x-request-id"]


def hs256_signed_with(secret: bytes, payload: dict) -> str:
    """An HS256 token signed with arbitrary bytes, which PyJWT's encoder refuses to do."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _pem_keys(private_key) -> tuple[bytes, bytes]:
    private = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize(
    ("algorithm", "private_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
async def test_public_key_tokens(aiohttp_client, settings, store, tmp_path, algorithm, private_key):
    private, public = _pem_keys(private_key())
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public)
    client = await aiohttp_client(
        app_for(settings.with_changes(jwt_secret=None, jwt_public_key=key_file))
    )
    job, _ = await store.create_pending(new_job())
    signed = mint_token(private, CLIENT_ID, ["job:read"], "user-1", 600, algorithm)
    ok = await client.get(f"/api/jobs/{job['_id']}", headers={"Authorization": f"Bearer {signed}"})
    assert ok.status == 200
    # The public key used as an HS256 secret (algorithm confusion) must not pass.
    forged = hs256_signed_with(public, claims())
    for token in (forged, mint_token(TEST_SECRET, CLIENT_ID, ["job:read"], "u", 600)):
        denied = await client.get(
            f"/api/jobs/{job['_id']}", headers={"Authorization": f"Bearer {token}"}
        )
        body = await denied.json()
        assert_error_envelope(denied, body, 401, "access_denied")
        assert body["error"]["message"] == INVALID


async def test_gateway_mode_trusts_the_gateway_headers(aiohttp_client, settings, store) -> None:
    client = await aiohttp_client(app_for(settings.with_changes(auth_mode="gateway")))
    job, _ = await store.create_pending(new_job())
    consumer = {
        "x-consumer-id": "user-1",
        "x-consumer-metadata": f'{{"client_id": "{CLIENT_ID}"}}',
        "x-consumer-scope": "job:read encounter:write",
    }
    assert (await client.get(f"/api/jobs/{job['_id']}", headers=consumer)).status == 200

    other = {**consumer, "x-consumer-metadata": f'{{"client_id": "{OTHER_CLIENT_ID}"}}'}
    assert (await client.get(f"/api/jobs/{job['_id']}", headers=other)).status == 404

    no_scope = {**consumer, "x-consumer-scope": "encounter:write"}
    response = await client.get(f"/api/jobs/{job['_id']}", headers=no_scope)
    assert (await response.json())["error"]["message"] == SCOPE_MESSAGE

    for broken in ({}, {"x-consumer-id": "user-1"}, {**consumer, "x-consumer-metadata": "{"}):
        response = await client.get(f"/api/jobs/{job['_id']}", headers=broken)
        body = await response.json()
        assert_error_envelope(response, body, 401, "access_denied")
        assert body["error"]["message"] == "The gateway did not identify the consumer"


async def raw_request(api, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes on the wire, for requests no well-behaved client library would send."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(request)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("host", [b"a:b:c", b"x:99999", b"\xff\xfe", b"[::1"])
async def test_a_malformed_host_still_gets_the_envelope(api, host) -> None:
    status, headers, body = await raw_request(
        api, b"GET /api/jobs/some-job HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    payload = json.loads(body)
    assert status == 401 and payload["error"]["type"] == "access_denied"
    assert payload["error"]["message"] == "Missing header Authorization"
    assert payload["meta"]["request_id"] == headers["x-request-id"]
    assert payload["meta"]["url"].endswith("/api/jobs/some-job")


@pytest.mark.parametrize("token", [b"\xff\xfe\xfd", "ключ".encode(), b"eyJ~.x.y"])
async def test_a_token_of_odd_bytes_is_401(api, token) -> None:
    status, _, body = await raw_request(
        api,
        b"GET /api/jobs/some-job HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 401, body
    assert json.loads(body)["error"]["type"] == "access_denied"
    assert json.loads(body)["error"]["message"] == INVALID


UNUSABLE_CLAIMS = {
    "empty sub": ({"sub": ""}, "The access token's sub claim must be a non-empty string"),
    "sub not a string": ({"sub": 7}, "The access token's sub claim must be a non-empty string"),
    "empty client_id": (
        {"client_id": ""},
        "The access token's client_id claim must be a non-empty string",
    ),
    "scope as a list": (
        {"scope": ["job:read"]},
        "The access token's scope claim must be a string of space-separated scopes",
    ),
    "no sub": ({"sub": None}, "The access token has no sub claim"),
}


@pytest.mark.parametrize(("bad_claims", "message"), UNUSABLE_CLAIMS.values(), ids=UNUSABLE_CLAIMS)
async def test_tokens_with_unusable_claims_are_401(api, bad_claims, message) -> None:
    response = await api.get("/api/jobs/some-job", headers=token_with(claims(**bad_claims)))
    body = await response.json()
    assert_error_envelope(response, body, 401, "access_denied")
    assert body["error"]["message"] == message


async def test_audience_and_issuer_are_checked_when_configured(aiohttp_client, settings) -> None:
    client = await aiohttp_client(
        app_for(settings.with_changes(jwt_audience="medevents", jwt_issuer="https://idp"))
    )

    async def answer(**extra) -> tuple[int, str | None]:
        response = await client.get("/api/jobs/unknown", headers=token_with(claims(**extra)))
        error = (await response.json())["error"]
        return response.status, error["message"] if response.status == 401 else error["type"]

    assert await answer(aud="medevents", iss="https://idp") == (404, "not_found")
    assert await answer(aud="another-service", iss="https://idp") == (401, INVALID)
    assert await answer(aud="medevents", iss="https://elsewhere") == (401, INVALID)
    assert await answer(iss="https://idp") == (401, "The access token has no aud claim")
    assert await answer(aud="medevents") == (401, "The access token has no iss claim")


async def test_without_a_configured_audience_aud_is_not_looked_at(api) -> None:
    response = await api.get("/api/jobs/unknown", headers=token_with(claims(aud="any")))
    assert response.status == 404

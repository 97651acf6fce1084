"""The identity a request is accepted with is one its submission can carry: the HTTP API's
token and gateway checks take exactly what `RequestedBySchema` takes, at its limits and one
character past them, measured on what `submission_body` puts in the message."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from schemas.submission import (
    MAX_CLIENT_ID_LENGTH,
    MAX_SCOPE_LENGTH,
    MAX_USER_ID_LENGTH,
    RequestedBySchema,
)
from service.api.auth import GatewayAuthenticator, JwtAuthenticator, mint_token
from service.api.errors import Unauthorized
from service.domain.principal import Principal
from service.usecases.submissions import submission_body
from tests.conftest import TEST_SECRET

PATIENT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def scopes_of_length(length: int) -> list[str]:
    """`encounter:write` and one more scope, `length` characters once sorted and joined."""
    return ["encounter:write", "z" * (length - len("encounter:write "))]


def identities() -> list[tuple[str, str, list[str]]]:
    """(user id, client id, scopes): each part at its limit, then one character past it."""
    base = ("user-1", "mis-1", ["encounter:write"])
    cases = []
    for extra in (0, 1):
        cases.append(("u" * (MAX_USER_ID_LENGTH + extra), base[1], base[2]))
        cases.append((base[0], "c" * (MAX_CLIENT_ID_LENGTH + extra), base[2]))
        cases.append((base[0], base[1], scopes_of_length(MAX_SCOPE_LENGTH + extra)))
    return cases


def headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


def accepted_by_the_token_check(user_id: str, client_id: str, scopes: list[str]):
    token = mint_token(TEST_SECRET, client_id, scopes, user_id, 600)
    authenticator = JwtAuthenticator(TEST_SECRET, ["HS256"])
    try:
        return authenticator.authenticate(headers({"Authorization": f"Bearer {token}"}))
    except Unauthorized:
        return None


def accepted_by_the_gateway_check(user_id: str, client_id: str, scopes: list[str]):
    gateway = {
        "x-consumer-id": user_id,
        "x-consumer-metadata": orjson.dumps({"client_id": client_id}).decode(),
        "x-consumer-scope": " ".join(scopes),
    }
    try:
        return GatewayAuthenticator().authenticate(headers(gateway))
    except Unauthorized:
        return None


def accepted_by_the_schema(user_id: str, client_id: str, scopes: list[str]) -> bool:
    principal = Principal.from_scope_text(user_id, client_id, " ".join(scopes))
    message = submission_body("encounter_package.create", PATIENT, principal, {})
    return not RequestedBySchema().validate(message["requested_by"])


@pytest.mark.parametrize(
    "check", [accepted_by_the_token_check, accepted_by_the_gateway_check], ids=["jwt", "gateway"]
)
@pytest.mark.parametrize(("user_id", "client_id", "scopes"), identities())
def test_the_http_check_takes_what_the_message_schema_takes(
    check, user_id, client_id, scopes
) -> None:
    at_limit = all(
        len(value) <= limit
        for value, limit in (
            (user_id, MAX_USER_ID_LENGTH),
            (client_id, MAX_CLIENT_ID_LENGTH),
            (" ".join(sorted(scopes)), MAX_SCOPE_LENGTH),
        )
    )
    assert accepted_by_the_schema(user_id, client_id, scopes) is at_limit
    assert (check(user_id, client_id, scopes) is not None) is at_limit


def test_the_scope_is_measured_as_the_message_carries_it() -> None:
    """Repeated scopes and runs of spaces do not count: the message carries each scope once,
    sorted, joined by single spaces."""
    scopes = ["encounter:write"] * 300  # 4,799 characters as sent, 15 as carried
    principal = accepted_by_the_token_check("user-1", "mis-1", scopes)
    assert principal is not None and principal.scope_text == "encounter:write"
    assert accepted_by_the_schema("user-1", "mis-1", scopes)

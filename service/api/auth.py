"""Who is calling, and what they may do.

Two modes (`AUTH_MODE`):
- `jwt`: `Authorization: Bearer <JWT>` carrying `sub`, `client_id`, `scope` and `exp`, checked
  with `JWT_SECRET` (HS256) or the public key in `JWT_PUBLIC_KEY` (RS256 or ES256).
- `gateway`: an API gateway has checked the caller and set `x-consumer-id` (the user),
  `x-consumer-metadata` (JSON with `client_id`) and `x-consumer-scope` (space separated), as
  eHealth's deployment does; the service trusts those headers.

Either way the identity must fit a submission's `requested_by` (`schemas.submission`'s limits),
and a token's time claims must be JSON numbers; anything else is refused with 401 at once.
"""

from __future__ import annotations

import math
import os
import secrets
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import jwt
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from multidict import CIMultiDictProxy

from schemas.submission import MAX_CLIENT_ID_LENGTH, MAX_SCOPE_LENGTH, MAX_USER_ID_LENGTH
from service.api.errors import Unauthorized
from service.config import Settings
from service.domain.principal import Principal

log = structlog.get_logger("medevents.auth")

SECRET_FILE_NAME = "jwt_secret"
MIN_SECRET_LENGTH = 32
VERIFIED_TOKENS_KEPT = 10_000
# Clocks of the token issuer and of this service may differ a little.
CLOCK_LEEWAY_SECONDS = 10


# Claims a token must carry; `nbf` and `iat` are optional, and numbers when present.
REQUIRED_CLAIMS = ("exp", "sub", "client_id")
TIME_CLAIMS = ("exp", "nbf", "iat")
# The longest identity accepted: the limits of a submission's `requested_by`, so that no
# accepted request fails in the consumer for who sent it.
IDENTITY_LIMITS = {
    "user_id": MAX_USER_ID_LENGTH,
    "client_id": MAX_CLIENT_ID_LENGTH,
    "scope": MAX_SCOPE_LENGTH,
}
# What each part of an identity is called in the refusal, by where it came from.
TOKEN_PARTS = {
    "user_id": "The access token's sub claim",
    "client_id": "The access token's client_id claim",
    "scope": "The access token's scope claim",
}
GATEWAY_PARTS = {
    "user_id": "The gateway's x-consumer-id",
    "client_id": "The gateway's client_id",
    "scope": "The gateway's scope",
}


class Authenticator(Protocol):
    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal: ...


# What a token is signed with (`mint_token`) and verified with (`JwtAuthenticator`): the
# HS256 secret, a PEM key, or a loaded RSA or EC key.
SigningKey = str | bytes | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
VerificationKey = str | bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwtAuthenticator:
    def __init__(
        self,
        key: VerificationKey,
        algorithms: list[str],
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._key = key
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        # Tokens already verified, with their expiry, by the `Authorization` header that
        # carried them: a poller sends the same header again and again, and verifying a
        # signature is a tenth of a poll's cost (parsing the header again, a hundredth).
        # Only the header as written, "Bearer <token>": the spellings `bearer_token` also
        # takes (case, spaces) are verified each time, so that one token cannot fill the
        # cache with variants of itself.
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        header = headers.get("Authorization", "")  # "": refused as missing, never kept
        known = self._verified.get(header)
        if known is not None:
            principal, expires = known
            if time.time() <= expires + CLOCK_LEEWAY_SECONDS:
                self._verified.move_to_end(header)
                return principal
            del self._verified[header]
            raise Unauthorized("The access token has expired")
        token = bearer_token(header)
        principal, expires = self._verify(token)
        if len(header) == len(token) + 7 and header.startswith("Bearer "):
            self._verified[header] = (principal, expires)
            if len(self._verified) > VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                # `aud` is checked when JWT_AUDIENCE names this service, else not looked at.
                # The time claims and `sub` are checked below, with messages of their own.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_aud": self._audience is not None,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                },
            )
        except jwt.MissingRequiredClaimError as missing:
            raise Unauthorized(f"The access token has no {missing.claim} claim") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized("The access token is invalid") from None
        # The signature is good: what is wrong with the claims can be said.
        check_time_claims(claims, time.time())
        user_id, client_id, scope = claims["sub"], claims["client_id"], claims.get("scope", "")
        for name, value in (("sub", user_id), ("client_id", client_id)):
            if not isinstance(value, str) or not value:
                raise Unauthorized(f"The access token's {name} claim must be a non-empty string")
        if not isinstance(scope, str):
            raise Unauthorized(
                "The access token's scope claim must be a string of space-separated scopes"
            )
        principal = Principal.from_scope_text(user_id, client_id, scope)
        check_identity(principal, TOKEN_PARTS)
        return principal, claims["exp"]


def check_time_claims(claims: dict[str, Any], now: float) -> None:
    """`exp`, `nbf` and `iat` as RFC 7519 has them, JSON numbers of seconds (PyJWT would take
    `"9999999999"` or `true`), then checked against the clock as PyJWT does."""
    for name in TIME_CLAIMS:
        if name in claims and not _is_number(claims[name]):
            raise Unauthorized(f"The access token's {name} claim must be a number")
    if claims["exp"] <= now - CLOCK_LEEWAY_SECONDS:
        raise Unauthorized("The access token has expired")
    for name in ("nbf", "iat"):
        if name in claims and claims[name] > now + CLOCK_LEEWAY_SECONDS:
            raise Unauthorized("The access token is not yet valid")


def _is_number(value: object) -> bool:
    """A JSON number: not a string, not a boolean, not the NaN or Infinity Python's JSON
    parser lets through."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def check_identity(principal: Principal, described: dict[str, str]) -> None:
    """Refuse an identity a submission could not carry (`schemas.submission`'s limits, the same
    the consumer checks `requested_by` against), or one that is not text MongoDB can store."""
    values = {
        "user_id": principal.user_id,
        "client_id": principal.client_id,
        "scope": principal.scope_text,
    }
    for part, value in values.items():
        if len(value) > IDENTITY_LIMITS[part]:
            limit = IDENTITY_LIMITS[part]
            raise Unauthorized(f"{described[part]} is longer than {limit} characters")
        if not _is_text(value):
            raise Unauthorized(f"{described[part]} is not valid text")


def _is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON's `\\ud800` escapes decode to lone surrogates, which are not."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class GatewayAuthenticator:
    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        user_id = headers.get("x-consumer-id", "").strip()
        try:
            metadata = orjson.loads(headers.get("x-consumer-metadata", ""))
        except orjson.JSONDecodeError:
            metadata = None
        client_id = metadata.get("client_id") if isinstance(metadata, dict) else None
        if not user_id or not isinstance(client_id, str) or not client_id:
            raise Unauthorized("The gateway did not identify the consumer")
        scope = headers.get("x-consumer-scope")
        if scope is None and isinstance(metadata.get("scope"), str):
            scope = metadata["scope"]
        principal = Principal.from_scope_text(user_id, client_id, scope or "")
        check_identity(principal, GATEWAY_PARTS)
        return principal


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing header Authorization")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("The Authorization header must be: Bearer <token>")
    if not token.isascii():  # a JWT is base64url and dots; anything else is not one
        raise Unauthorized("The access token is invalid")
    return token


def local_secret(data_dir: Path) -> str:
    """The development secret kept in `DATA_DIR/jwt_secret`, generated on first use.

    Written whole to a temporary file and linked into place, so that processes starting at
    once all read the one secret that won, never a half-written file.
    """
    path = data_dir / SECRET_FILE_NAME
    if path.exists():
        return _read_secret(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=data_dir, prefix=".jwt_secret.")
    try:
        with os.fdopen(descriptor, "w") as file:  # mkstemp creates it with mode 0600
            file.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)
            log.warning("jwt_secret_generated", path=str(path))
        except FileExistsError:
            pass  # another process won: use its secret
    finally:
        os.unlink(temporary)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"{path} holds no usable secret; delete it to have a new one made")
    return secret


def signing_secret(settings: Settings) -> str:
    """The HS256 secret: `JWT_SECRET`, or the local development one."""
    return settings.jwt_secret or local_secret(settings.data_dir)


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth_mode == "gateway":
        return GatewayAuthenticator()
    checks = {"audience": settings.jwt_audience, "issuer": settings.jwt_issuer}
    if settings.jwt_public_key is not None:  # checked by Settings: RSA, or EC on P-256
        key = load_pem_public_key(settings.jwt_public_key.read_bytes())
        if isinstance(key, rsa.RSAPublicKey):
            return JwtAuthenticator(key, ["RS256"], **checks)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return JwtAuthenticator(key, ["ES256"], **checks)
        raise ValueError("JWT_PUBLIC_KEY is neither an RSA nor an EC public key")
    return JwtAuthenticator(signing_secret(settings), ["HS256"], **checks)


def mint_token(
    secret_or_key: SigningKey,
    client_id: str,
    scopes: list[str],
    user_id: str,
    expires_in: int,
    algorithm: str = "HS256",
    *,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A token as the service expects it; used by `medevents token` and the tests. With the
    `aud` and `iss` claims when given (those the API requires: `JWT_AUDIENCE`, `JWT_ISSUER`)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "client_id": client_id,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + expires_in,
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret_or_key, algorithm=algorithm)

"""Who is calling, and what they may do.

Two modes (`AUTH_MODE`):
- `jwt`: `Authorization: Bearer <JWT>` carrying `sub`, `client_id`, `scope` and `exp`, checked
  with `JWT_SECRET` (HS256) or the public key in `JWT_PUBLIC_KEY` (RS256 or ES256).
- `gateway`: an API gateway has checked the caller and set `x-consumer-id` (the user),
  `x-consumer-metadata` (JSON with `client_id`) and `x-consumer-scope` (space separated), as
  eHealth's deployment does; the service trusts those headers.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import jwt
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from multidict import CIMultiDictProxy

from service.api.errors import Unauthorized
from service.config import Settings
from service.domain.principal import Principal

log = structlog.get_logger("medevents.auth")

SECRET_FILE_NAME = "jwt_secret"
MIN_SECRET_LENGTH = 32
VERIFIED_TOKENS_KEPT = 10_000
# Clocks of the token issuer and of this service may differ a little.
CLOCK_LEEWAY_SECONDS = 10


class Authenticator(Protocol):
    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal: ...


class JwtAuthenticator:
    def __init__(
        self,
        key: object,
        algorithms: list[str],
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._key = key
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        # Tokens already verified, with their expiry: a poller sends the same token again and
        # again, and verifying a signature is a tenth of a poll's cost.
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def authenticate(self, headers: CIMultiDictProxy[str]) -> Principal:
        token = bearer_token(headers.get("Authorization"))
        known = self._verified.get(token)
        if known is not None:
            principal, expires = known
            if time.time() <= expires + CLOCK_LEEWAY_SECONDS:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
            raise Unauthorized("The access token has expired")
        principal, expires = self._verify(token)
        self._verified[token] = (principal, expires)
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
                options={
                    "require": ["exp", "sub", "client_id"],
                    "verify_aud": self._audience is not None,
                },
                leeway=CLOCK_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The access token is not yet valid") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized("The access token is invalid") from None
        user_id, client_id, scope = claims["sub"], claims["client_id"], claims.get("scope", "")
        identified = all(isinstance(value, str) and value for value in (user_id, client_id))
        if not identified or not isinstance(scope, str):
            raise Unauthorized("The access token is invalid")
        return Principal.from_scope_text(user_id, client_id, scope), float(claims["exp"])


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
        return Principal.from_scope_text(user_id, client_id, scope or "")


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
        algorithm = "RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"
        return JwtAuthenticator(key, [algorithm], **checks)
    return JwtAuthenticator(signing_secret(settings), ["HS256"], **checks)


def mint_token(
    secret_or_key: object,
    client_id: str,
    scopes: list[str],
    user_id: str,
    expires_in: int,
    algorithm: str = "HS256",
) -> str:
    """A token as the service expects it; used by `medevents token` and the tests."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "client_id": client_id,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + expires_in,
    }
    return jwt.encode(claims, secret_or_key, algorithm=algorithm)

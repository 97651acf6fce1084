"""`medevents token` and the development secret it signs with; a bad configuration named,
and a consumer that could verify no signature refused."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from service.cli.main import main


def test_token_is_signed_with_a_secret_generated_once_under_data_dir(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))

    assert main(["token", "--client-id", "mis-1", "--scope", "job:read encounter:write"]) == 0
    first = capsys.readouterr().out.strip()
    secret_file = tmp_path / "data" / "jwt_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text()

    claims = jwt.decode(first, secret, algorithms=["HS256"])
    assert claims["client_id"] == "mis-1"
    assert claims["scope"] == "job:read encounter:write"
    assert claims["exp"] > time.time()

    assert main(["token", "--client-id", "mis-2", "--scope", "job:read"]) == 0
    second = capsys.readouterr().out.strip()
    assert secret_file.read_text() == secret
    assert jwt.decode(second, secret, algorithms=["HS256"])["client_id"] == "mis-2"


def test_token_uses_the_configured_secret(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("JWT_SECRET", "configured-secret-configured-secret-0123")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert main(["token", "--client-id", "c", "--scope", "job:read"]) == 0
    token = capsys.readouterr().out.strip()
    jwt.decode(token, "configured-secret-configured-secret-0123", algorithms=["HS256"])
    assert not (tmp_path / "data" / "jwt_secret").exists()


def test_token_names_the_audience_and_issuer_the_api_requires(tmp_path, monkeypatch, capsys):
    """With JWT_AUDIENCE and JWT_ISSUER set, a token the API's own authenticator accepts."""
    from service.api.auth import build_authenticator
    from service.config import Settings

    secret = "configured-secret-configured-secret-0123"
    monkeypatch.setenv("JWT_SECRET", secret)
    monkeypatch.setenv("JWT_AUDIENCE", "medical-events")
    monkeypatch.setenv("JWT_ISSUER", "https://auth.example")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert main(["token", "--client-id", "c", "--scope", "job:read"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="medical-events")
    assert claims["aud"] == "medical-events" and claims["iss"] == "https://auth.example"
    authenticator = build_authenticator(Settings.from_env())
    principal = authenticator.authenticate({"Authorization": f"Bearer {token}"})  # type: ignore[arg-type]
    assert principal.client_id == "c"


def test_publish_wait_with_a_public_key_is_refused_before_publishing(
    tmp_path, monkeypatch, capsys
) -> None:
    """It could only sign a token the API refuses: exit 2, nothing published (no broker is
    needed to see it: the refusal comes before any connection)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("JWT_PUBLIC_KEY", str(public))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100")
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    submission = tmp_path / "s.json"
    submission.write_text('{"type": "encounter_package", "data": {}}')
    assert main(["publish", str(submission), "--wait"]) == 2
    assert "JWT_PUBLIC_KEY" in capsys.readouterr().err


def test_a_bad_configuration_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("HTTP_PORT", "eighty")
    assert main(["token", "--client-id", "c"]) == 2
    assert "HTTP_PORT must be an integer" in capsys.readouterr().err


def test_a_ca_file_that_is_not_there_is_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SIGNATURE_CA_FILE", str(tmp_path / "ca.pem"))
    assert main(["token", "--client-id", "c"]) == 2
    assert "SIGNATURE_CA_FILE: no such file" in capsys.readouterr().err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["consumer", "run"])
def test_a_consumer_without_ca_certificates_does_not_start(command, monkeypatch, capsys) -> None:
    """SIGNATURE_MODE is `cms` unless told otherwise: a consumer that could verify no signature
    stops before it connects to anything."""
    monkeypatch.delenv("SIGNATURE_MODE", raising=False)
    monkeypatch.delenv("SIGNATURE_CA_FILE", raising=False)
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:1/")  # never reached
    assert main([command]) == 2
    assert "SIGNATURE_MODE=cms needs SIGNATURE_CA_FILE" in capsys.readouterr().err


def _secret_in(data_dir: str) -> str:
    from service.api.auth import local_secret

    return local_secret(Path(data_dir))


@pytest.mark.parametrize("round_number", range(5))
def test_processes_starting_at_once_share_one_whole_secret(tmp_path, round_number) -> None:
    from concurrent.futures import ProcessPoolExecutor

    data_dir = str(tmp_path / f"data-{round_number}")
    with ProcessPoolExecutor(max_workers=4) as pool:
        secrets_seen = list(pool.map(_secret_in, [data_dir] * 8))
    assert len(set(secrets_seen)) == 1
    assert len(secrets_seen[0]) >= 32
    assert sorted(p.name for p in Path(data_dir).iterdir()) == ["jwt_secret"]


def test_an_emptied_secret_file_is_an_error_not_an_empty_key(tmp_path) -> None:
    from service.api.auth import local_secret

    (tmp_path / "jwt_secret").write_text("")
    with pytest.raises(ValueError, match="no usable secret"):
        local_secret(tmp_path)

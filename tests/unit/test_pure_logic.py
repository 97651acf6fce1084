"""Pure logic: configuration parsing, job ids, the error cap, date rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from schemas.envelope import UtcDateTime
from service.config import ConfigError, Settings
from service.domain.jobs import MAX_ERROR_BYTES, cap_error, is_valid_job_id, new_job_id
from tests.signing import TestCA


def test_defaults_work_for_local_use() -> None:
    settings = Settings.from_env({})
    assert settings.mongodb_url is None
    assert settings.http_port == 8080
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.auth_mode == "jwt"
    assert settings.job_ttl_days == 7
    # Signatures are verified unless told otherwise (a consumer then needs SIGNATURE_CA_FILE).
    assert (settings.signature_mode, settings.signature_ca_file) == ("cms", None)


def test_every_variable_is_read(tmp_path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(TestCA().pem + TestCA("Another CA").pem)
    settings = Settings.from_env(
        {
            "MONGODB_URL": "mongodb://db:27017/?replicaSet=rs0",
            "MONGODB_DB": "events",
            "MONGODB_TIMEOUT_MS": "700",
            "AMQP_URL": "amqp://u:p@mq:5672/v",
            "HTTP_HOST": "0.0.0.0",
            "HTTP_PORT": "9000",
            "AMQP_PREFIX": "staging.",
            "AUTH_MODE": "GATEWAY",
            "JWT_SECRET": "s" * 32,
            "JWT_AUDIENCE": "medevents",
            "JWT_ISSUER": "https://auth.example",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "JOB_TTL_DAYS": "3",
            "CONSUMER_PREFETCH": "32",
            "METRICS_PORT": "9999",
            "MAX_REQUEST_BYTES": "2048",
            "DATA_DIR": "/var/lib/medevents",
            "SIGNATURE_MODE": "DECODE",
            "SIGNATURE_CA_FILE": str(ca_file),
        }
    )
    assert settings.mongodb_url == "mongodb://db:27017/?replicaSet=rs0"
    assert (settings.mongodb_db, settings.mongodb_timeout_ms) == ("events", 700)
    assert settings.amqp_url == "amqp://u:p@mq:5672/v"
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9000)
    assert settings.amqp_prefix == "staging."
    assert (settings.auth_mode, settings.jwt_secret) == ("gateway", "s" * 32)
    assert (settings.jwt_audience, settings.jwt_issuer) == ("medevents", "https://auth.example")
    assert (settings.log_format, settings.log_level) == ("json", "warning")
    assert (settings.job_ttl_days, settings.consumer_prefetch) == (3, 32)
    assert settings.metrics_port == 9999
    assert settings.max_request_bytes == 2048
    assert str(settings.data_dir) == "/var/lib/medevents"
    assert (settings.signature_mode, settings.signature_ca_file) == ("decode", ca_file)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HTTP_PORT": "x"}, "HTTP_PORT must be an integer"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT must be between 0 and 65535"),
        ({"JOB_TTL_DAYS": "0"}, "JOB_TTL_DAYS must be between 1 and 3650"),
        ({"JOB_TTL_DAYS": "1000000"}, "JOB_TTL_DAYS must be between 1 and 3650"),
        ({"AUTH_MODE": "basic"}, "AUTH_MODE must be one of jwt, gateway"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of"),
        ({"JWT_SECRET": "s" * 32, "JWT_PUBLIC_KEY": "/k.pem"}, "not both"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least 32 characters"),
        ({"JWT_PUBLIC_KEY": "/no/such/key.pem"}, "no such file"),
        ({"JWT_PUBLIC_KEY": __file__}, "not a PEM public key"),
        ({"MONGODB_URL": "notaurl"}, "MONGODB_URL must start with mongodb://"),
        ({"AMQP_URL": "http://mq"}, "AMQP_URL must start with amqp://"),
        ({"SIGNATURE_MODE": "pkcs7"}, "SIGNATURE_MODE must be one of cms, decode"),
        ({"SIGNATURE_CA_FILE": "/no/such/ca.pem"}, "SIGNATURE_CA_FILE: no such file"),
        ({"SIGNATURE_CA_FILE": __file__}, "SIGNATURE_CA_FILE: no PEM certificates"),
    ],
)
def test_bad_values_are_named(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("job_id", ["a", "NBXk9EyErUZv1RhXgyvgg", "a-b_c", "9" * 64, new_job_id()])
def test_valid_job_ids(job_id) -> None:
    assert is_valid_job_id(job_id)


@pytest.mark.parametrize("job_id", ["", "a" * 65, "../x", "$ne", '{"$gt":""}', "a b", "a\n", "ä"])
def test_invalid_job_ids(job_id) -> None:
    assert not is_valid_job_id(job_id)


def test_an_error_under_the_cap_is_kept_whole() -> None:
    error = {"type": "validation_failed", "message": "m", "invalid": [{"entry": "$.a"}]}
    assert cap_error(error) is error


def test_an_error_over_the_cap_keeps_the_longest_prefix_that_fits() -> None:
    invalid = [
        {"entry": f"$.data.items[{i}]", "rules": [{"rule": "required"}]} for i in range(1000)
    ]
    error = {"type": "validation_failed", "message": "m", "invalid": invalid}
    capped = cap_error(error)
    size = len(orjson.dumps(capped))
    assert size <= MAX_ERROR_BYTES
    kept = len(capped["invalid"])
    assert capped["invalid"] == invalid[:kept]
    assert capped["invalid_total"] == 1000
    one_more = {**capped, "invalid": invalid[: kept + 1]}
    assert len(orjson.dumps(one_more)) > MAX_ERROR_BYTES


def test_params_go_before_entries_as_the_original_cuts_an_error() -> None:
    """An unknown property's value is in its rule's params: a large one is dropped first,
    and every entry is kept."""
    rule = {"rule": "schema", "params": {"x": "y" * 20_000}, "description": "d"}
    invalid = [{"entry": f"$.items.[{i}].x", "rules": [rule]} for i in range(3)]
    capped = cap_error({"type": "validation_failed", "message": "m", "invalid": invalid})
    assert [entry["rules"][0]["params"] for entry in capped["invalid"]] == [[], [], []]
    assert "invalid_total" not in capped


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (datetime(2018, 8, 2, 10, 45, 16, tzinfo=UTC), "2018-08-02T10:45:16.000Z"),
        (datetime(2018, 8, 2, 10, 45, 16, 936999, tzinfo=UTC), "2018-08-02T10:45:16.936Z"),
        (
            datetime(2018, 8, 2, 13, 45, 16, tzinfo=timezone(timedelta(hours=3))),
            "2018-08-02T10:45:16.000Z",
        ),
        (datetime(2018, 8, 2, 10, 45, 16), "2018-08-02T10:45:16.000Z"),
    ],
)
def test_dates_render_in_utc_with_milliseconds(value, rendered) -> None:
    assert UtcDateTime().serialize("eta", {"eta": value}) == rendered


def test_a_public_key_on_another_curve_is_refused(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path = tmp_path / "p384.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="P-256"):
        Settings.from_env({"JWT_PUBLIC_KEY": str(path)})


def test_a_ca_file_without_certificates_is_refused(tmp_path) -> None:
    """A PEM file, but of a key: SIGNATURE_CA_FILE must hold CA certificates."""
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "key.pem"
    path.write_bytes(
        TestCA()
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="SIGNATURE_CA_FILE: no PEM certificates"):
        Settings.from_env({"SIGNATURE_MODE": "cms", "SIGNATURE_CA_FILE": str(path)})
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigError, match="SIGNATURE_CA_FILE"):
        Settings.from_env({"SIGNATURE_CA_FILE": str(directory)})

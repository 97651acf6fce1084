"""Configuration, read once from the environment.

Every variable has a default that works for local use; docs/configuration.md
lists them all. `Settings.from_env` is the only place that reads `os.environ`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

AUTH_MODES = ("jwt", "gateway")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# How `signed_data` is read (service.signatures): `cms` verifies a CMS signature
# against SIGNATURE_CA_FILE; `decode` only decodes base64 JSON, for development and tests.
SIGNATURE_MODES = ("cms", "decode")


class ConfigError(ValueError):
    """A variable holds a value the service cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    mongodb_url: str | None = None
    mongodb_db: str = "medical_events"
    mongodb_timeout_ms: int = 2000
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_prefix: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    auth_mode: str = "jwt"
    jwt_secret: str | None = None
    jwt_public_key: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    job_ttl_days: int = 7
    consumer_prefetch: int = 16
    metrics_port: int = 9464
    max_request_bytes: int = 1024 * 1024
    # Slow clients (service.api.app.server_options), in seconds: a request's head must arrive
    # whole within the first of its first byte (a new connection's, of its opening); its body
    # may go no longer than the second without a byte; an idle kept-alive connection is closed
    # after the third.
    http_header_timeout_seconds: int = 10
    http_body_timeout_seconds: int = 30
    http_keepalive_timeout_seconds: int = 75
    # The finished jobs' responses an API process keeps (service.usecases.finished_jobs).
    finished_job_cache_bytes: int = 64 * 1024 * 1024
    # How long an API process answers a pending job from memory after reading it, in
    # milliseconds (service.usecases.pending_polls).
    pending_job_cache_ms: int = 1000
    data_dir: Path = Path(".data")
    signature_mode: str = "cms"
    signature_ca_file: Path | None = None
    # The reconciler (service.usecases.reconciler): how often it looks for pending jobs that
    # nothing will finish, the grace past a job's ETA, and the hard limit of a pending job
    # (0: none). Seconds.
    reconcile_interval_seconds: float = 60.0
    job_deadline_grace_seconds: float = 300.0
    job_max_pending_seconds: float = 86400.0
    # Webhooks (service.usecases.webhooks, docs/webhooks.md): the delays between attempts (each
    # waited with +-20% jitter, then dead-lettered), whether http and private or loopback
    # addresses are allowed (development and tests only), one attempt's whole time, deliveries
    # in progress per webhook process, how long the old secret still signs after a rotation,
    # how soon a new endpoint is seen by the consumers, and how long attempts are listed.
    webhook_retry_schedule: tuple[float, ...] = (5.0, 30.0, 300.0, 1800.0, 7200.0)
    webhook_allow_insecure: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_prefetch: int = 32
    webhook_secret_overlap_seconds: int = 86400
    webhook_endpoint_cache_seconds: float = 5.0
    webhook_deliveries_ttl_days: int = 30
    # Deliveries in flight at once to one endpoint, per webhook process (the others of that
    # endpoint wait in the first delay queue, no attempt counted).
    webhook_max_in_flight_per_endpoint: int = 4
    # The reverse proxies whose X-Forwarded-Proto and X-Forwarded-Host the API believes when
    # one is the direct peer (service.api.middlewares.forwarded): addresses and networks.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # `/health/live` on METRICS_PORT (service.observability.liveness) answers 503 once the
    # event loop has not run its heartbeat for this long, in seconds.
    liveness_stall_seconds: int = 10

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        public_key = reader.text("JWT_PUBLIC_KEY")
        ca_file = reader.text("SIGNATURE_CA_FILE")
        settings = cls(
            mongodb_url=reader.text("MONGODB_URL"),
            mongodb_db=reader.text("MONGODB_DB") or defaults.mongodb_db,
            mongodb_timeout_ms=reader.integer("MONGODB_TIMEOUT_MS", defaults.mongodb_timeout_ms, 1),
            amqp_url=reader.text("AMQP_URL") or defaults.amqp_url,
            amqp_prefix=reader.text("AMQP_PREFIX") or defaults.amqp_prefix,
            http_host=reader.text("HTTP_HOST") or defaults.http_host,
            http_port=reader.integer("HTTP_PORT", defaults.http_port, 0, 65535),
            auth_mode=reader.choice("AUTH_MODE", defaults.auth_mode, AUTH_MODES),
            jwt_secret=reader.text("JWT_SECRET"),
            jwt_public_key=Path(public_key) if public_key else None,
            jwt_audience=reader.text("JWT_AUDIENCE"),
            jwt_issuer=reader.text("JWT_ISSUER"),
            log_format=reader.choice("LOG_FORMAT", defaults.log_format, LOG_FORMATS),
            log_level=reader.choice("LOG_LEVEL", defaults.log_level, LOG_LEVELS),
            job_ttl_days=reader.integer("JOB_TTL_DAYS", defaults.job_ttl_days, 1, 3650),
            consumer_prefetch=reader.integer(
                "CONSUMER_PREFETCH", defaults.consumer_prefetch, 1, 65535
            ),
            metrics_port=reader.integer("METRICS_PORT", defaults.metrics_port, 0, 65535),
            max_request_bytes=reader.integer(
                "MAX_REQUEST_BYTES", defaults.max_request_bytes, 1024, MAX_REQUEST_BYTES_LIMIT
            ),
            http_header_timeout_seconds=reader.integer(
                "HTTP_HEADER_TIMEOUT_SECONDS", defaults.http_header_timeout_seconds, 1, 3600
            ),
            http_body_timeout_seconds=reader.integer(
                "HTTP_BODY_TIMEOUT_SECONDS", defaults.http_body_timeout_seconds, 1, 3600
            ),
            http_keepalive_timeout_seconds=reader.integer(
                "HTTP_KEEPALIVE_TIMEOUT_SECONDS", defaults.http_keepalive_timeout_seconds, 1, 3600
            ),
            finished_job_cache_bytes=reader.integer(
                "FINISHED_JOB_CACHE_BYTES", defaults.finished_job_cache_bytes, 0, 1 << 40
            ),
            pending_job_cache_ms=reader.integer(
                "PENDING_JOB_CACHE_MS", defaults.pending_job_cache_ms, 0, 10_000
            ),
            data_dir=Path(reader.text("DATA_DIR") or defaults.data_dir),
            signature_mode=reader.choice(
                "SIGNATURE_MODE", defaults.signature_mode, SIGNATURE_MODES
            ),
            signature_ca_file=Path(ca_file) if ca_file else None,
            reconcile_interval_seconds=reader.integer(
                "RECONCILE_INTERVAL_SECONDS", int(defaults.reconcile_interval_seconds), 1, 86400
            ),
            job_deadline_grace_seconds=reader.integer(
                "JOB_DEADLINE_GRACE_SECONDS", int(defaults.job_deadline_grace_seconds), 60, 86400
            ),
            job_max_pending_seconds=reader.integer(
                "JOB_MAX_PENDING_SECONDS", int(defaults.job_max_pending_seconds), 0, 3650 * 86400
            ),
            webhook_retry_schedule=_retry_schedule(
                reader.text("WEBHOOK_RETRY_SCHEDULE"), defaults.webhook_retry_schedule
            ),
            webhook_allow_insecure=_flag(
                reader.text("WEBHOOK_ALLOW_INSECURE"), "WEBHOOK_ALLOW_INSECURE"
            ),
            webhook_timeout_seconds=reader.integer(
                "WEBHOOK_TIMEOUT_SECONDS", int(defaults.webhook_timeout_seconds), 1, 60
            ),
            webhook_prefetch=reader.integer("WEBHOOK_PREFETCH", defaults.webhook_prefetch, 1, 1000),
            webhook_secret_overlap_seconds=reader.integer(
                "WEBHOOK_SECRET_OVERLAP_SECONDS",
                defaults.webhook_secret_overlap_seconds,
                0,
                30 * 86400,
            ),
            webhook_endpoint_cache_seconds=reader.integer(
                "WEBHOOK_ENDPOINT_CACHE_SECONDS",
                int(defaults.webhook_endpoint_cache_seconds),
                0,
                300,
            ),
            webhook_deliveries_ttl_days=reader.integer(
                "WEBHOOK_DELIVERIES_TTL_DAYS", defaults.webhook_deliveries_ttl_days, 1, 3650
            ),
            webhook_max_in_flight_per_endpoint=reader.integer(
                "WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT",
                defaults.webhook_max_in_flight_per_endpoint,
                1,
                1000,
            ),
            trusted_proxies=_trusted_proxies(reader.text("TRUSTED_PROXIES")),
            liveness_stall_seconds=reader.integer(
                "LIVENESS_STALL_SECONDS", defaults.liveness_stall_seconds, 1, 3600
            ),
        )
        if "AMQP_PREFIX" not in env and settings.mongodb_url is None:
            # Local use (the embedded MongoDB of DATA_DIR): exchanges and queues of this data
            # directory's own, so that two local instances on one broker never take each
            # other's messages. `AMQP_PREFIX=` (set, empty) keeps the shared names.
            settings = settings.with_changes(amqp_prefix=local_amqp_prefix(settings.data_dir))
        if (
            settings.job_max_pending_seconds
            and settings.job_max_pending_seconds < settings.job_deadline_grace_seconds
        ):
            raise ConfigError("JOB_MAX_PENDING_SECONDS must be 0 or >= JOB_DEADLINE_GRACE_SECONDS")
        if settings.reconcile_interval_seconds * 2 > settings.job_deadline_grace_seconds:
            # The reconciler's deadline rule holds only with runs at most half the grace apart
            # (service.usecases.reconciler).
            raise ConfigError(
                "RECONCILE_INTERVAL_SECONDS must be at most half of JOB_DEADLINE_GRACE_SECONDS, "
                f"got {settings.reconcile_interval_seconds:g} and "
                f"{settings.job_deadline_grace_seconds:g}"
            )
        if settings.jwt_secret and settings.jwt_public_key:
            raise ConfigError("set either JWT_SECRET or JWT_PUBLIC_KEY, not both")
        if settings.jwt_secret and len(settings.jwt_secret) < MIN_JWT_SECRET_LENGTH:
            raise ConfigError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_LENGTH} characters")
        if settings.jwt_public_key:
            _check_public_key(settings.jwt_public_key)
        if settings.signature_ca_file is not None:
            _check_ca_file(settings.signature_ca_file)
        _check_scheme("MONGODB_URL", settings.mongodb_url, ("mongodb://", "mongodb+srv://"))
        _check_scheme("AMQP_URL", settings.amqp_url, ("amqp://", "amqps://"))
        return settings

    def with_changes(self, **changes: Any) -> Self:
        return replace(self, **changes)


MIN_JWT_SECRET_LENGTH = 32

# A submission is wrapped in a message the consumer reads up to 4 MiB (schemas.submission).
MAX_REQUEST_BYTES_LIMIT = 3 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable `Settings.from_env` reads: its name, the `Settings` field it sets (whose
    default is the variable's), its meaning in one line, the `medevents` commands that use
    it (their `--help` lists it, with its default), and whether its value is a secret (its
    default is never printed)."""

    name: str
    setting: str
    meaning: str
    commands: frozenset[str]
    secret: bool = False

    @property
    def default(self) -> object:
        return getattr(Settings(), self.setting)


# Which commands use a variable: `run` is the API, the consumer and the webhooks in one
# process; `patient` and `registry` write to MongoDB; `publish` and `dead-letters` use the
# broker, under the local prefix of DATA_DIR while MONGODB_URL is unset.
_API = frozenset({"api", "run"})
_CONSUMER = frozenset({"consumer", "run"})
_WEBHOOKS = frozenset({"webhooks", "run"})
_MONGODB = _API | _CONSUMER | _WEBHOOKS | {"patient", "registry"}
_BROKER = _API | _CONSUMER | _WEBHOOKS | {"publish", "dead-letters"}
_EVERY = _MONGODB | _BROKER | {"token"}

# Every variable `Settings.from_env` reads, in docs/configuration.md's order; it reads no other
# (`_Reader`). `medevents <command> --help` prints the table's rows of that command.
ENVIRONMENT = (
    Variable(
        "MONGODB_URL",
        "mongodb_url",
        "a MongoDB connection string (mongodb:// or mongodb+srv://); unset: an embedded"
        " server under DATA_DIR",
        _MONGODB | _BROKER,
    ),
    Variable("MONGODB_DB", "mongodb_db", "the database", _MONGODB),
    Variable(
        "MONGODB_TIMEOUT_MS",
        "mongodb_timeout_ms",
        "how long to look for a server before answering 503; an operation: 5 times as long",
        _MONGODB,
    ),
    Variable("AMQP_URL", "amqp_url", "the RabbitMQ broker (amqp:// or amqps://)", _BROKER),
    Variable(
        "AMQP_PREFIX",
        "amqp_prefix",
        "a prefix for every exchange and queue; unset while MONGODB_URL is unset:"
        " local.<hash of DATA_DIR>.",
        _BROKER,
    ),
    Variable(
        "HTTP_HOST",
        "http_host",
        "the address the API listens on; consumer and webhooks: their /metrics",
        _API | {"consumer", "webhooks"},
    ),
    Variable(
        "HTTP_PORT",
        "http_port",
        "the port the API listens on (publish --wait polls it there unless --api)",
        _API | {"publish"},
    ),
    Variable(
        "TRUSTED_PROXIES",
        "trusted_proxies",
        "IPs or CIDRs, comma separated, of the proxies whose X-Forwarded-Proto and"
        " X-Forwarded-Host the API believes",
        _API,
    ),
    Variable(
        "AUTH_MODE",
        "auth_mode",
        "jwt (Bearer tokens) or gateway (the API gateway's x-consumer-* headers)",
        _API,
    ),
    Variable(
        "JWT_SECRET",
        "jwt_secret",
        "the HS256 secret, at least 32 characters; unset: one generated once in"
        " DATA_DIR/jwt_secret",
        _API | {"token", "publish"},
        secret=True,
    ),
    Variable(
        "JWT_PUBLIC_KEY",
        "jwt_public_key",
        "a PEM public key file (RSA: RS256, P-256: ES256), instead of JWT_SECRET",
        _API | {"token"},
    ),
    Variable("JWT_AUDIENCE", "jwt_audience", "the aud claim tokens must carry", _API),
    Variable("JWT_ISSUER", "jwt_issuer", "the iss claim tokens must carry", _API),
    Variable(
        "LOG_FORMAT",
        "log_format",
        "json, console, or auto: console on a terminal, JSON otherwise",
        _EVERY,
    ),
    Variable("LOG_LEVEL", "log_level", "debug, info, warning or error", _EVERY),
    Variable("JOB_TTL_DAYS", "job_ttl_days", "days a finished job is kept", _CONSUMER),
    Variable(
        "CONSUMER_PREFETCH",
        "consumer_prefetch",
        "messages the consumer works on at once",
        _CONSUMER,
    ),
    Variable(
        "RECONCILE_INTERVAL_SECONDS",
        "reconcile_interval_seconds",
        "how often pending jobs that nothing will finish are looked for (<= grace / 2)",
        _CONSUMER,
    ),
    Variable(
        "JOB_DEADLINE_GRACE_SECONDS",
        "job_deadline_grace_seconds",
        "a pending job this long past its ETA, its message out of the queue, is ended",
        _CONSUMER,
    ),
    Variable(
        "JOB_MAX_PENDING_SECONDS",
        "job_max_pending_seconds",
        "a pending job this old is ended whatever the queue holds (0: never)",
        _CONSUMER,
    ),
    Variable(
        "WEBHOOK_RETRY_SCHEDULE",
        "webhook_retry_schedule",
        "seconds between a webhook's attempts, comma separated, then its dead letter",
        _API | _CONSUMER | _WEBHOOKS,
    ),
    Variable(
        "WEBHOOK_ALLOW_INSECURE",
        "webhook_allow_insecure",
        "1: webhook endpoints may be http and private addresses (development, tests)",
        _API | _WEBHOOKS,
    ),
    Variable(
        "WEBHOOK_TIMEOUT_SECONDS",
        "webhook_timeout_seconds",
        "one webhook attempt's whole time (connect, send, answer)",
        _WEBHOOKS,
    ),
    Variable(
        "WEBHOOK_PREFETCH",
        "webhook_prefetch",
        "webhook deliveries in progress at once per process",
        _WEBHOOKS,
    ),
    Variable(
        "WEBHOOK_SECRET_OVERLAP_SECONDS",
        "webhook_secret_overlap_seconds",
        "how long the previous secret still signs after a rotation",
        _API,
    ),
    Variable(
        "WEBHOOK_ENDPOINT_CACHE_SECONDS",
        "webhook_endpoint_cache_seconds",
        "a new webhook endpoint receives events within this",
        _API | _CONSUMER,
    ),
    Variable(
        "WEBHOOK_DELIVERIES_TTL_DAYS",
        "webhook_deliveries_ttl_days",
        "how long webhook delivery attempts are kept and listed",
        _WEBHOOKS,
    ),
    Variable(
        "WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT",
        "webhook_max_in_flight_per_endpoint",
        "webhook attempts to one endpoint at once per process; the others wait",
        _WEBHOOKS,
    ),
    Variable(
        "METRICS_PORT",
        "metrics_port",
        "where consumer and webhooks serve /metrics and /health/live (0: nowhere)",
        frozenset({"consumer", "webhooks"}),
    ),
    Variable(
        "LIVENESS_STALL_SECONDS",
        "liveness_stall_seconds",
        "/health/live on METRICS_PORT answers 503 once the event loop stalled this long",
        frozenset({"consumer", "webhooks"}),
    ),
    Variable(
        "MAX_REQUEST_BYTES",
        "max_request_bytes",
        "larger request bodies get 413 (at most 3 MiB)",
        _API,
    ),
    Variable(
        "HTTP_HEADER_TIMEOUT_SECONDS",
        "http_header_timeout_seconds",
        "a request's head must arrive whole within this of its first byte",
        _API,
    ),
    Variable(
        "HTTP_BODY_TIMEOUT_SECONDS",
        "http_body_timeout_seconds",
        "the longest a request's body may go without a byte (then 408)",
        _API,
    ),
    Variable(
        "HTTP_KEEPALIVE_TIMEOUT_SECONDS",
        "http_keepalive_timeout_seconds",
        "an idle kept-alive connection is closed after this",
        _API,
    ),
    Variable(
        "FINISHED_JOB_CACHE_BYTES",
        "finished_job_cache_bytes",
        "the finished jobs' responses an API process keeps, in bytes (0: none)",
        _API,
    ),
    Variable(
        "PENDING_JOB_CACHE_MS",
        "pending_job_cache_ms",
        "how long an API process answers a pending job from memory after reading it, in"
        " milliseconds (0: never): the longest a finished job can still be seen pending when"
        " its event is lost",
        _API,
    ),
    Variable(
        "DATA_DIR",
        "data_dir",
        "local state: the embedded MongoDB's files, the development JWT secret",
        _EVERY,
    ),
    Variable(
        "SIGNATURE_MODE",
        "signature_mode",
        "cms: verify signed_data against SIGNATURE_CA_FILE; decode: base64 JSON (development)",
        _CONSUMER,
    ),
    Variable(
        "SIGNATURE_CA_FILE",
        "signature_ca_file",
        "PEM CA certificates a signer must chain to (cms needs it)",
        _CONSUMER,
    ),
)
ENVIRONMENT_NAMES = frozenset(variable.name for variable in ENVIRONMENT)


def local_amqp_prefix(data_dir: Path) -> str:
    """The prefix of a local instance's exchanges and queues: a short hash of its data
    directory's resolved path (`local.1a2b3c4d.`), the same for every `medevents` command run
    with the same DATA_DIR."""
    digest = hashlib.sha256(str(data_dir.expanduser().resolve()).encode()).hexdigest()
    return f"local.{digest[:8]}."


def _check_scheme(name: str, url: str | None, schemes: tuple[str, ...]) -> None:
    if url is not None and not url.startswith(schemes):
        raise ConfigError(f"{name} must start with {' or '.join(schemes)}")


def _check_ca_file(path: Path) -> None:
    """PEM CA certificates to verify signatures with, or a ConfigError saying why not. (A
    consumer in `cms` mode without them refuses to start: `Services.signatures`.)"""
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"SIGNATURE_CA_FILE: no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SIGNATURE_CA_FILE: no PEM certificates in {path} ({exc})") from None


def _check_public_key(path: Path) -> None:
    """An RSA key (RS256) or a P-256 EC key (ES256) in PEM, or a ConfigError saying why not."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"JWT_PUBLIC_KEY: no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY: not a PEM public key: {path} ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    raise ConfigError("JWT_PUBLIC_KEY must be an RSA key (RS256) or a P-256 EC key (ES256)")


def _retry_schedule(raw: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    """WEBHOOK_RETRY_SCHEDULE: seconds between attempts, separated by commas (`5,30,300`);
    each from 0.01 s to 7 days, at most 20 of them; empty: no retry."""
    if raw is None:
        return default
    try:
        steps = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, got {raw!r}"
        ) from None
    if len(steps) > 20 or any(not 0.01 <= step <= 7 * 86400 for step in steps):
        raise ConfigError(
            "WEBHOOK_RETRY_SCHEDULE takes at most 20 delays, each from 0.01 to 604800 seconds"
        )
    return steps


def _trusted_proxies(
    raw: str | None,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """TRUSTED_PROXIES: IP addresses and CIDR networks separated by commas
    (`10.0.0.0/8,192.168.1.7,fd00::/8`); empty: none."""
    if raw is None:
        return ()
    networks = []
    for part in (item.strip() for item in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ConfigError(
                "TRUSTED_PROXIES must be IP addresses or CIDR networks separated by commas, "
                f"got {part!r} ({exc})"
            ) from None
    return tuple(networks)


def _flag(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str | None:
        if name not in ENVIRONMENT_NAMES:  # a variable read is a variable described
            raise LookupError(f"{name} is not in service.config.ENVIRONMENT")
        value = self._env.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"{name} must be {bounds}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

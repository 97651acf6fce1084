"""The deployment files against their tools and against the service itself.

- `docker-compose.yml`: the Compose specification's JSON schema and `docker-compose config`
  (both from Debian's docker-compose package); commands the service has, variables it reads
  and values it accepts, health-gated dependencies, maintained images.
- `deploy/nginx.conf`: read by its structure (`nginx_config`), checked by nginx itself
  (`nginx -t`, Debian's nginx-light) and run in front of a recording backend: /metrics is
  hidden, the request id and the X-Forwarded-* headers are passed, connections are reused.
- `deploy/k8s/`: every document valid for Kubernetes `K8S_VERSION` (kubernetes-validate,
  strict; the KEDA documents against their own schema here), every pod admitted by the Pod
  Security Standards' `restricted` profile (`pod_security`), and the manifests against the
  service: commands, variables, probes' routes and ports, queue names, the version's image.
"""

from __future__ import annotations

import configparser
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumers.consumer import STOP_TIMEOUT_SECONDS as CONSUMER_STOP_SECONDS
from consumers.processors import builtin_registry
from service.api.routes import setup_routes
from service.api.views.jobs import MAX_WAIT_SECONDS
from service.bootstrap import Services
from service.cli.main import build_parser
from service.config import SIGNATURE_MODES, Settings
from service.domain.request_ids import REQUEST_ID_HEADER, SANE_REQUEST_ID
from service.messaging.broker import Topology
from service.observability.liveness import LIVENESS_PATH
from service.signatures import CmsSignatureVerifier
from service.webhooks_delivery import STOP_TIMEOUT_SECONDS as WEBHOOKS_STOP_SECONDS
from tests.deployment import nginx_config
from tests.deployment.pod_security import restricted_violations
from tests.signing import TestCA

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
K8S_DIR = ROOT / "deploy" / "k8s"
# Installed by `make test` (scripts/ensure-test-tools) with Debian's docker-compose package.
COMPOSE_SPEC = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
COMPOSE_ENV = {"JWT_SECRET": "s" * 40, "RABBITMQ_PASSWORD": "test-password"}
# Our services of the compose file and the `medevents` command each runs.
OUR_SERVICES = {"api": "api", "consumer": "consumer", "webhooks": "webhooks"}
# Installed by `make test` (scripts/ensure-test-tools) with Debian's nginx-light package.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# The oldest Kubernetes release still maintained upstream: the manifests use nothing newer.
K8S_VERSION = "1.35"
# The Deployments and the `medevents` command each runs; the workers' grace periods.
ROLES = {"medevents-api": "api", "medevents-consumer": "consumer", "medevents-webhooks": "webhooks"}
WORKERS = {"medevents-consumer": CONSUMER_STOP_SECONDS, "medevents-webhooks": WEBHOOKS_STOP_SECONDS}
# nginx's open-source `resolve` parameter of an upstream server appeared in 1.27.3.
NGINX_RESOLVE_SINCE = (1, 27, 3)


class RecordingEnviron(dict):
    """An environment that remembers every name `Settings.from_env` asks for."""

    def __init__(self, values: Mapping[str, str] = ()) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def settings_variables() -> set[str]:
    environ = RecordingEnviron()
    Settings.from_env(environ)
    return environ.asked


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${NAME:?message}` and `${NAME:-default}` interpolation, enough for our file."""

    def value(match: re.Match) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert operator == ":-", f"{name} is required: {rest}"
        return rest

    return re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", value, text)


def compose_document() -> dict[str, Any]:
    return yaml.safe_load(substitute(COMPOSE_FILE.read_text(), COMPOSE_ENV))


def image_version(image: str) -> tuple[int, ...]:
    """`nginx:1.30-alpine` -> (1, 30)."""
    tag = image.rpartition(":")[2]
    match = re.match(r"(\d+(?:\.\d+)*)", tag)
    assert match, f"{image} names no version"
    return tuple(int(part) for part in match.group(1).split("."))


def project_version() -> str:
    """The package's version: PEP 621 metadata in pyproject.toml, else setup.cfg's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("project", {})
    if "version" in project:
        return project["version"]
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["version"]


def test_settings_read_the_variables_docs_configuration_lists() -> None:
    """Every variable `Settings` reads is documented in docs/configuration.md."""
    page = ROOT / "docs" / "configuration.md"
    assert page.exists(), "docs/configuration.md documents the configuration"
    text = page.read_text()
    missing = sorted(name for name in settings_variables() if f"`{name}`" not in text)
    assert missing == [], f"read but not documented in docs/configuration.md: {missing}"


# --- docker-compose.yml ---


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert COMPOSE_SPEC.exists(), "run scripts/ensure-test-tools (Debian's docker-compose)"
    schema = json.loads(COMPOSE_SPEC.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose_document())
    ]
    assert errors == []


def test_docker_compose_config_accepts_the_file_and_requires_the_secrets() -> None:
    assert shutil.which("docker-compose"), "run scripts/ensure-test-tools (docker-compose)"
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    command = ["docker-compose", "--file", str(COMPOSE_FILE), "config", "--quiet"]
    accepted = subprocess.run(command, env={**base, **COMPOSE_ENV}, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    refused = subprocess.run(command, env=base, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "JWT_SECRET" in refused.stderr or "RABBITMQ_PASSWORD" in refused.stderr


def test_compose_runs_every_role_on_maintained_images_after_healthy_dependencies() -> None:
    services = compose_document()["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["consumer"]["deploy"]["replicas"] == 3
    assert services["webhooks"]["command"] == ["webhooks"]
    # MongoDB 7 or later (maintained), RabbitMQ 4.x with its management UI, nginx recent
    # enough for the upstream `resolve` parameter deploy/nginx.conf uses.
    assert services["mongo"]["image"].startswith("mongo:")
    assert image_version(services["mongo"]["image"])[0] >= 7
    assert "--replSet" in services["mongo"]["command"]
    rabbitmq = services["rabbitmq"]["image"]
    assert re.fullmatch(r"rabbitmq:4\.\d+-management", rabbitmq), rabbitmq
    assert services["lb"]["image"].startswith("nginx:")
    assert image_version(services["lb"]["image"]) >= NGINX_RESOLVE_SINCE[:2]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency] or dependency == "api", dependency
    # Every service the others wait on has a health check; the API's is the image's own.
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()


def test_compose_commands_and_environment_are_ones_the_service_accepts() -> None:
    services = compose_document()["services"]
    known = settings_variables()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in OUR_SERVICES.items():
        service = services[name]
        assert service["command"] == [command] and command in commands
        environment = {key: str(value) for key, value in service["environment"].items()}
        assert set(environment) <= known, set(environment) - known
        settings = Settings.from_env(environment)  # raises ConfigError on a bad value
        assert settings.mongodb_url and "replicaSet=rs0" in settings.mongodb_url
        assert "w=majority" in settings.mongodb_url
        assert service["stop_grace_period"] == "45s"
    # The workers run from the image's `consumer` target, whose HEALTHCHECK asks
    # /health/live on METRICS_PORT (503 once the event loop is wedged): the port the
    # target exposes, and none of their own to override it.
    dockerfile = (ROOT / "Dockerfile").read_text()
    consumer_target = dockerfile[dockerfile.index(" AS consumer") : dockerfile.index(" AS api")]
    for name in ("consumer", "webhooks"):
        worker = services[name]
        assert worker["build"] == {"context": ".", "target": "consumer"}, name
        assert worker["image"] == "medevents-consumer:local", name
        assert "healthcheck" not in worker, name
        assert f"EXPOSE {worker['environment']['METRICS_PORT']}" in consumer_target
        assert "METRICS_PORT" in consumer_target and "/health/live" in consumer_target
    consumer = services["consumer"]
    # The consumers say how they read `signed_data`; in `cms` mode, from a CA file mounted
    # read-only (`decode`, for local use, needs none).
    environment = {key: str(value) for key, value in consumer["environment"].items()}
    mode = environment.get("SIGNATURE_MODE")
    assert mode in SIGNATURE_MODES, "the consumers need SIGNATURE_MODE"
    if mode == "cms":
        ca_file = environment["SIGNATURE_CA_FILE"]
        mounts = [volume.split(":") for volume in consumer.get("volumes", [])]
        assert [ca_file, "ro"] in [mount[1:] for mount in mounts], consumer.get("volumes")


def test_compose_api_believes_forwarded_headers_from_nginx_alone() -> None:
    """TRUSTED_PROXIES names nginx's fixed address on the stack's own subnet: no other
    container, and no client, can set the scheme and host the API writes links with."""
    document = compose_document()
    (subnet,) = document["networks"]["default"]["ipam"]["config"]
    network = ipaddress.ip_network(subnet["subnet"])
    lb_address = ipaddress.ip_address(
        document["services"]["lb"]["networks"]["default"]["ipv4_address"]
    )
    assert lb_address in network
    # The others' addresses come from ip_range: nginx's can never be handed to one of them.
    assert lb_address not in ipaddress.ip_network(subnet["ip_range"])
    assert ipaddress.ip_network(subnet["ip_range"]).subnet_of(network)
    trusted = document["services"]["api"]["environment"]["TRUSTED_PROXIES"]
    assert [ipaddress.ip_address(part.strip()) for part in trusted.split(",")] == [lb_address]


# --- deploy/nginx.conf ---


def nginx_http() -> nginx_config.Directive:
    return nginx_config.parse(NGINX_CONF.read_text()).one("http")


def nginx_server() -> nginx_config.Directive:
    (server,) = nginx_http().find("server")
    return server


def nginx_version() -> tuple[int, ...]:
    assert Path(NGINX).exists(), "run scripts/ensure-test-tools (Debian's nginx-light)"
    output = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    assert match, output
    return tuple(int(part) for part in match.groups())


def nginx_copy(
    upstream: str, *, keep_resolve: bool, listen: str = "8080", access_log: str = "/dev/stdout"
) -> str:
    """deploy/nginx.conf with `api:8080` replaced by an address this host has (nginx resolves
    a name without `resolve` at start, and Docker's `api` exists only in the stack), `resolve`
    kept only where the nginx here knows it (1.27.3 and later; Debian 12 has 1.22)."""
    text = NGINX_CONF.read_text()
    server = "server api:8080 resolve;"
    assert text.count(server) == 1
    text = text.replace(server, f"server {upstream}{' resolve' if keep_resolve else ''};")
    assert text.count("listen 8080;") == 1 and text.count("access_log /dev/stdout ") == 1
    text = text.replace("listen 8080;", f"listen {listen};")
    return text.replace("access_log /dev/stdout ", f"access_log {access_log} ")


def test_nginx_balances_the_api_replicas_and_outlasts_a_long_poll() -> None:
    http = nginx_http()
    # Docker's DNS asked again within seconds, for the upstream's `resolve` server.
    resolver = http.one("resolver")
    assert resolver.args[0] == "127.0.0.11"
    assert re.fullmatch(r"valid=\d+s", resolver.args[1])
    upstream = http.one("upstream", "medevents_api")
    assert upstream.one("server").args == ["api:8080", "resolve"]
    assert upstream.one("zone").args[0] == "medevents_api"  # `resolve` needs a shared zone
    (location,) = nginx_server().find("location", "/")
    assert location.one("proxy_pass").args == ["http://medevents_api"]
    timeout = location.one("proxy_read_timeout").args[0]
    assert int(timeout.removesuffix("s")) > MAX_WAIT_SECONDS


def test_nginx_keeps_connections_to_the_api_alive_below_the_apis_keepalive() -> None:
    """Kept-alive connections are closed by nginx before the API would close them (else a
    request sent as the API closes gets a 502): below HTTP_KEEPALIVE_TIMEOUT_SECONDS, the
    default's and the compose file's."""
    upstream = nginx_http().one("upstream", "medevents_api")
    assert int(upstream.one("keepalive").args[0]) >= 1
    keepalive = int(upstream.one("keepalive_timeout").args[0].removesuffix("s"))
    api_environment = compose_document()["services"]["api"]["environment"]
    api_keepalive = Settings.from_env(
        {key: str(value) for key, value in api_environment.items()}
    ).http_keepalive_timeout_seconds
    assert keepalive < min(Settings().http_keepalive_timeout_seconds, api_keepalive)
    (location,) = nginx_server().find("location", "/")
    assert location.one("proxy_http_version").args == ["1.1"]
    assert location.one("proxy_set_header", "Connection").args == ["Connection", ""]


def test_nginx_cuts_off_slow_clients_before_the_api_does() -> None:
    """Headers, body and response each have a timeout at the proxy, none longer than the
    API's own (HTTP_HEADER_TIMEOUT_SECONDS, HTTP_BODY_TIMEOUT_SECONDS), none shorter than a
    normal client needs (a second or more)."""
    server = nginx_server()
    defaults = Settings()

    def seconds(directive: str) -> int:
        (value,) = server.one(directive).args
        assert value.endswith("s"), f"nginx.conf sets {directive} in seconds"
        return int(value.removesuffix("s"))

    assert 1 <= seconds("client_header_timeout") <= defaults.http_header_timeout_seconds
    assert 1 <= seconds("client_body_timeout") <= defaults.http_body_timeout_seconds
    assert 1 <= seconds("send_timeout")


def test_nginx_passes_the_request_id_and_the_forwarded_headers_and_logs_the_id() -> None:
    http = nginx_http()
    # A client's request id when the service would keep it (the same pattern), else nginx's.
    header_variable = "$http_" + REQUEST_ID_HEADER.lower().replace("-", "_")
    (request_id_map,) = http.find("map", header_variable)
    variable = request_id_map.args[1]
    entries = {entry.name: entry.args for entry in request_id_map.block or []}
    pattern = f"~^{SANE_REQUEST_ID.pattern}$"
    assert entries == {pattern: [header_variable], "default": ["$request_id"]}
    (location,) = nginx_server().find("location", "/")
    headers = {
        directive.args[0].lower(): directive.args[1:]
        for directive in location.find("proxy_set_header")
    }
    assert headers[REQUEST_ID_HEADER] == [variable]
    assert headers["x-forwarded-for"] == ["$remote_addr"]  # the outermost proxy: replaced
    assert headers["x-forwarded-proto"] == ["$scheme"]
    assert headers["x-forwarded-host"] == ["$http_host"]
    (log_format,) = http.find("log_format")
    assert variable in "".join(log_format.args[2:])
    assert http.one("access_log").args[1] == log_format.args[0]


def test_nginx_hides_the_metrics_and_publishes_one_port() -> None:
    server = nginx_server()
    assert [listen.args for listen in server.find("listen")] == [["8080"]]
    (metrics,) = server.find("location", "=", "/metrics")
    assert metrics.one("return").args == ["404"]
    assert compose_document()["services"]["lb"]["ports"] == ["8080:8080"]


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    """`nginx -t` on the file itself, `api` replaced by an address (the stack's DNS name does
    not resolve here) and `resolve` dropped where this nginx predates it."""
    has_resolve = nginx_version() >= NGINX_RESOLVE_SINCE
    upstream = "api:8080" if has_resolve else "127.0.0.1:8080"
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_copy(upstream, keep_resolve=has_resolve))
    checked = subprocess.run(
        [NGINX, "-t", "-q", "-c", str(conf), "-p", str(tmp_path), "-e", "stderr"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


class RecordingBackend(ThreadingHTTPServer):
    """An HTTP/1.1 server that answers 200 and records each request's path, headers and the
    connection it came on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], tuple[str, int]]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                backend.seen.append((self.path, headers, self.client_address))
                body = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def running_nginx(tmp_path: Path) -> Iterator[tuple[int, RecordingBackend, Path]]:
    """deploy/nginx.conf served by this host's nginx (one process, in the foreground) in front
    of a `RecordingBackend` standing for the API replicas."""
    nginx_version()  # installed
    backend = RecordingBackend()
    serving = threading.Thread(target=backend.serve_forever, daemon=True)
    serving.start()
    port, log = free_port(), tmp_path / "access.log"
    text = nginx_copy(
        f"127.0.0.1:{backend.server_port}",
        keep_resolve=False,
        listen=f"127.0.0.1:{port}",
        access_log=str(log),
    )
    # Temporary files in the test's directory (nginx's compiled-in ones need root).
    text = text.replace(
        "http {",
        f"http {{\n    client_body_temp_path {tmp_path}/body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;",
        1,
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    process = subprocess.Popen(
        [
            NGINX,
            "-c",
            str(conf),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"daemon off; master_process off; pid {tmp_path}/nginx.pid;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not listen within 10 s"
            time.sleep(0.05)
        yield port, backend, log
    finally:
        process.terminate()
        process.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


def get(port: int, path: str, headers: Mapping[str, str] = {}) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


def test_nginx_proxies_as_configured(running_nginx: tuple[int, RecordingBackend, Path]) -> None:
    port, backend, log = running_nginx
    # /metrics is not served through the public port, however its path is spelled.
    assert get(port, "/metrics")[0] == 404
    assert get(port, "/%6Detrics?x=1")[0] == 404
    assert backend.seen == []

    # The client's request id passed on; a client's X-Forwarded-* replaced by what nginx saw.
    status, _ = get(
        port,
        "/api/jobs",
        {
            REQUEST_ID_HEADER: "client-id.1",
            "Host": "medevents.test:8443",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
        },
    )
    assert status == 200
    path, headers, first_connection = backend.seen[-1]
    assert path == "/api/jobs"
    assert headers[REQUEST_ID_HEADER] == "client-id.1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "medevents.test:8443"
    assert headers["host"] == "medevents.test:8443"

    # None, or one the service would not keep: nginx's own, 32 hex digits.
    made = []
    for sent in ({}, {REQUEST_ID_HEADER: "no spaces allowed"}):
        assert get(port, "/health/live", sent)[0] == 200
        _, headers, connection = backend.seen[-1]
        assert re.fullmatch(r"[0-9a-f]{32}", headers[REQUEST_ID_HEADER])
        made.append(headers[REQUEST_ID_HEADER])
        # Kept alive: every client connection's request came over the first upstream one.
        assert connection == first_connection
        assert "close" not in headers.get("connection", "").lower()
    assert made[0] != made[1]

    # Every request logged (once its response is sent: waited for), one JSON object per
    # line, with the id the API was given.
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["request_id"] for line in lines[2:]] == ["client-id.1", *made]
    assert [line["status"] for line in lines] == [404, 404, 200, 200, 200]


# --- deploy/k8s ---


def k8s_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def k8s_by_kind() -> dict[str, dict[str, dict[str, Any]]]:
    by_kind: dict[str, dict[str, dict]] = {}
    for document in k8s_documents():
        assert {"apiVersion", "kind", "metadata"} <= set(document)
        name = document["metadata"]["name"]
        assert name not in by_kind.get(document["kind"], {}), f"{document['kind']} {name} twice"
        by_kind.setdefault(document["kind"], {})[name] = document
    return by_kind


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions are not used here"
    return selector["matchLabels"].items() <= labels.items()


# The KEDA resources (keda.sh/v1alpha1) have no schema in kubernetes-validate: the fields
# KEDA's CRDs define that these manifests may use, nothing else (`additionalProperties`).
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
KEDA_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
    "additionalProperties": False,
}
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": KEDA_METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    **{
                        field: {"type": "integer", "minimum": 0}
                        for field in (
                            "pollingInterval",
                            "cooldownPeriod",
                            "initialCooldownPeriod",
                            "idleReplicaCount",
                            "minReplicaCount",
                            "maxReplicaCount",
                        )
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metadata": STRING_MAP,  # every value a string
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {
                                            "enum": [
                                                "TriggerAuthentication",
                                                "ClusterTriggerAuthentication",
                                            ]
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": KEDA_METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_kubernetes_manifests_are_valid_kubernetes_objects() -> None:
    """Every document against Kubernetes K8S_VERSION's own schemas, strict (no unknown
    field); KEDA's against KEDA_SCHEMAS."""
    validated = []
    for document in k8s_documents():
        kind, name = document["kind"], document["metadata"]["name"]
        if document["apiVersion"].startswith("keda.sh/"):
            jsonschema.Draft202012Validator(KEDA_SCHEMAS[kind]).validate(document)
        else:
            try:
                kubernetes_validate.validate(document, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                pytest.fail(f"{kind} {name}: {path}: {error.message}")
        validated.append(f"{kind}/{name}")
    assert len(validated) == len(set(validated)) >= 9, validated


def pod_templates() -> dict[str, dict[str, Any]]:
    deployments = k8s_by_kind()["Deployment"]
    assert set(deployments) == set(ROLES)
    return {name: deployment["spec"]["template"] for name, deployment in deployments.items()}


def test_kubernetes_pods_are_admitted_by_the_restricted_pod_security_standard() -> None:
    for name, template in pod_templates().items():
        assert restricted_violations(template) == [], name
        spec = template["spec"]
        # Beyond the profile: the Dockerfile's numeric user, no service account token, a
        # read-only root filesystem and no writable volume (nothing is written: MONGODB_URL
        # and JWT_SECRET are set, so DATA_DIR is never used).
        assert spec["securityContext"]["runAsUser"] == 10001
        assert "USER 10001\n" in (ROOT / "Dockerfile").read_text()
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            for mount in container.get("volumeMounts", []):
                assert mount.get("readOnly") is True, (name, mount)
        for volume in spec.get("volumes", []):
            assert "emptyDir" not in volume, (name, volume)


def test_pod_security_checker_refuses_what_the_restricted_profile_refuses() -> None:
    """`restricted_violations` itself: an admitted pod, then each rule broken once."""
    template = pod_templates()["medevents-consumer"]
    assert restricted_violations(template) == []

    def broken(change: Any) -> list[str]:
        copy = json.loads(json.dumps(template))
        change(copy["spec"], copy["spec"]["containers"][0]["securityContext"])
        return restricted_violations(copy)

    cases = {
        "hostNetwork": lambda pod, _: pod.update(hostNetwork=True),
        "hostPID": lambda pod, _: pod.update(hostPID=True),
        "hostPath": lambda pod, _: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "nfs": lambda pod, _: pod["volumes"].append({"name": "n", "nfs": {"server": "x"}}),
        "privileged": lambda _, container: container.update(privileged=True),
        "allowPrivilegeEscalation": lambda _, container: container.pop("allowPrivilegeEscalation"),
        "runAsNonRoot": lambda pod, _: pod["securityContext"].pop("runAsNonRoot"),
        "runAsNonRoot false": lambda _, container: container.update(runAsNonRoot=False),
        "runAsUser 0": lambda _, container: container.update(runAsUser=0),
        "seccomp unset": lambda pod, _: pod["securityContext"].pop("seccompProfile"),
        "seccomp Unconfined": lambda _, container: container.update(
            seccompProfile={"type": "Unconfined"}
        ),
        "drop ALL": lambda _, container: container["capabilities"].update(drop=["NET_RAW"]),
        "add SYS_ADMIN": lambda _, container: container["capabilities"].update(add=["SYS_ADMIN"]),
        "add CHOWN": lambda _, container: container["capabilities"].update(add=["CHOWN"]),
        "hostPort": lambda pod, _: pod["containers"][0]["ports"][0].update(hostPort=9464),
        "sysctl": lambda pod, _: pod["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]
        ),
        "SELinux": lambda _, container: container.update(seLinuxOptions={"type": "spc_t"}),
        "procMount": lambda _, container: container.update(procMount="Unmasked"),
    }
    for case, change in cases.items():
        assert broken(change) != [], f"{case} is admitted"


def test_kubernetes_manifests_match_the_service(tmp_path: Path) -> None:
    by_kind = k8s_by_kind()
    known = settings_variables()
    config = by_kind["ConfigMap"]["medevents"]["data"]
    secret = by_kind["Secret"]["medevents"]["stringData"]
    environment = {**config, **secret}
    assert set(environment) <= known, set(environment) - known
    settings = Settings.from_env(environment)  # every value is one the service accepts
    # DATA_DIR is never written: no embedded MongoDB, no generated JWT secret.
    assert settings.mongodb_url and (settings.jwt_secret or settings.jwt_public_key)

    from aiohttp import web

    app = web.Application()
    setup_routes(app, builtin_registry())
    paths = {resource.canonical for resource in app.router.resources()}
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    image = f"registry.example.org/medevents:{project_version()}"

    for name, template in pod_templates().items():
        deployment = by_kind["Deployment"][name]
        assert selects(deployment["spec"]["selector"], template["metadata"]["labels"])
        stop_seconds = WORKERS.get(name, MAX_WAIT_SECONDS)
        assert template["spec"]["terminationGracePeriodSeconds"] > stop_seconds, name
        (container,) = template["spec"]["containers"]
        assert container["args"] == [ROLES[name]] and ROLES[name] in commands
        assert container["image"] == image, "the image of this version (pyproject.toml)"
        sources = {next(iter(source.values()))["name"] for source in container["envFrom"]}
        assert sources == {"medevents"}
        own = {variable["name"] for variable in container.get("env", [])}
        assert own <= known, own - known

    api = pod_templates()["medevents-api"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["ports"][0]["containerPort"] == int(config["HTTP_PORT"])
    check_signature_ca(config, secret, pod_templates()["medevents-consumer"]["spec"], tmp_path)

    service = by_kind["Service"]["medevents-api"]
    api_labels = pod_templates()["medevents-api"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()


def test_worker_liveness_probes_ask_the_metrics_server_on_a_declared_port() -> None:
    """The consumer's and the webhook worker's liveness: GET /health/live on the metrics
    server (METRICS_PORT), by the name of a port the container declares."""
    config = k8s_by_kind()["ConfigMap"]["medevents"]["data"]
    for name in WORKERS:
        (container,) = pod_templates()[name]["spec"]["containers"]
        probe = container["livenessProbe"]["httpGet"]
        assert probe["path"] == LIVENESS_PATH == "/health/live", name
        ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
        assert probe["port"] in ports, f"{name}: the probe's port is not declared"
        assert ports[probe["port"]] == int(config["METRICS_PORT"]), name
        annotations = pod_templates()[name]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == config["METRICS_PORT"]


def test_keda_owns_the_consumers_replica_count() -> None:
    by_kind = k8s_by_kind()
    (scaled,) = by_kind["ScaledObject"].values()
    target = scaled["spec"]["scaleTargetRef"]
    deployment = by_kind[target.get("kind", "Deployment")][target["name"]]
    assert target["name"] == "medevents-consumer"
    assert "replicas" not in deployment["spec"], "KEDA sets the consumers' replicas"
    # The others are not scaled by KEDA: they say how many they run.
    for name, other in by_kind["Deployment"].items():
        if name != target["name"]:
            assert other["spec"]["replicas"] >= 2, name
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == Topology().queue
    auth = by_kind["TriggerAuthentication"][trigger["authenticationRef"]["name"]]
    (reference,) = auth["spec"]["secretTargetRef"]
    assert reference == {"parameter": "host", "name": "medevents", "key": "AMQP_URL"}
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_api_pods_have_a_disruption_budget() -> None:
    by_kind = k8s_by_kind()
    api = by_kind["Deployment"]["medevents-api"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    budgets = [
        budget
        for budget in by_kind["PodDisruptionBudget"].values()
        if selects(budget["spec"]["selector"], labels)
    ]
    (budget,) = budgets
    # One API pod may go at a time, and one always serves.
    assert 1 <= budget["spec"]["minAvailable"] < api["spec"]["replicas"]
    # No other pods are selected by it.
    for name, template in pod_templates().items():
        if name != "medevents-api":
            assert not selects(budget["spec"]["selector"], template["metadata"]["labels"])


def test_only_the_ingress_controller_and_prometheus_reach_the_api() -> None:
    """TRUSTED_PROXIES names the pod network (pod addresses are not fixed): a NetworkPolicy on
    the API pods is what keeps every other pod from setting the forwarded headers."""
    by_kind = k8s_by_kind()
    api = by_kind["Deployment"]["medevents-api"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    policies = [
        policy
        for policy in by_kind["NetworkPolicy"].values()
        if selects(policy["spec"]["podSelector"], labels)
    ]
    (policy,) = policies
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    # Whole namespaces by their immutable name label, no pod or IP block that would widen it.
    sources = [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    assert sources == [
        {"kubernetes.io/metadata.name": "ingress-nginx"},
        {"kubernetes.io/metadata.name": "monitoring"},
    ]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    declared = {port["name"] for port in container["ports"]}
    assert [port["port"] for port in rule["ports"]] == ["http"] and "http" in declared
    config = by_kind["ConfigMap"]["medevents"]["data"]
    assert config["TRUSTED_PROXIES"]  # set, and only safe because of this policy


def test_ingress_routes_the_public_api_only() -> None:
    """The ingress reaches the API's Service by a port it has, for /api and /dashboard, and
    never /metrics or /health."""
    by_kind = k8s_by_kind()
    (ingress,) = by_kind["Ingress"].values()
    service = by_kind["Service"]["medevents-api"]
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    prefixes = []
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "medevents-api"
            assert backend["port"]["name"] in service_ports
            assert path["pathType"] == "Prefix"
            prefixes.append(path["path"])
    assert sorted(prefixes) == ["/api", "/dashboard"]
    for hidden in ("/metrics", "/health/live", "/health/ready"):
        assert not any(hidden.startswith(prefix) for prefix in prefixes), hidden


def check_signature_ca(
    config: dict[str, str], secret: dict[str, str], pod: dict[str, Any], tmp_path: Path
) -> None:
    """The consumers verify signatures (`cms`) against a CA file that a Secret or ConfigMap
    mounts read-only where SIGNATURE_CA_FILE says: a consumer of these settings starts."""
    (container,) = pod["containers"]
    own = {variable["name"]: variable["value"] for variable in container.get("env", [])}
    assert set(own) <= settings_variables(), set(own) - settings_variables()
    environment = {**config, **secret, **own}
    assert environment.get("SIGNATURE_MODE") == "cms"
    ca_file = Path(environment["SIGNATURE_CA_FILE"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    files: dict[Path, dict] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume.get("configMap") or volume.get("secret")
        if source is None:
            continue
        assert source.get("optional") is not True  # no CA bundle: the pod does not start
        for item in source.get("items", []):
            files[Path(mount["mountPath"]) / item["path"]] = mount
    assert ca_file in files, f"{ca_file} is not mounted from a Secret or ConfigMap"
    assert files[ca_file].get("readOnly") is True

    # The same settings with the file as it would be mounted: the consumer can verify.
    mounted = tmp_path / ca_file.name
    mounted.write_bytes(TestCA().pem)
    settings = Settings.from_env({**environment, "SIGNATURE_CA_FILE": str(mounted)})
    assert isinstance(Services(settings, builtin_registry()).signatures, CmsSignatureVerifier)

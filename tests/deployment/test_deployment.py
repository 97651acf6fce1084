"""The deployment files: `docker-compose.yml` against the Compose specification's JSON schema
and `docker-compose config` (both from Debian's docker-compose package), and the compose file,
the Dockerfile and the Kubernetes examples against the service itself: commands it has,
variables it reads and accepts, routes it serves, queue names it declares."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumers.consumer import STOP_TIMEOUT_SECONDS
from consumers.processors import builtin_registry
from service.api.routes import setup_routes
from service.bootstrap import Services
from service.cli.main import build_parser
from service.config import SIGNATURE_MODES, Settings
from service.messaging.broker import Topology
from service.signatures import CmsSignatureVerifier
from tests.signing import TestCA

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
# Installed by `make test` (scripts/ensure-test-tools) with Debian's docker-compose package.
COMPOSE_SPEC = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
COMPOSE_ENV = {"JWT_SECRET": "s" * 40, "RABBITMQ_PASSWORD": "test-password"}
OUR_SERVICES = {"api": "api", "consumer": "consumer"}


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


def k8s_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_settings_read_the_variables_the_readme_lists() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in settings_variables():
        assert f"`{name}`" in readme, f"{name} is read but not documented"


# --- docker-compose.yml ---


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert COMPOSE_SPEC.exists(), "run scripts/ensure-test-tools (Debian's docker-compose)"
    schema = json.loads(COMPOSE_SPEC.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose_document())
    ]
    assert errors == []


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file_and_requires_the_secrets() -> None:
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    command = ["docker-compose", "--file", str(COMPOSE_FILE), "config", "--quiet"]
    accepted = subprocess.run(command, env={**base, **COMPOSE_ENV}, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    refused = subprocess.run(command, env=base, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "JWT_SECRET" in refused.stderr or "RABBITMQ_PASSWORD" in refused.stderr


def test_compose_runs_two_apis_and_three_consumers_after_healthy_dependencies() -> None:
    services = compose_document()["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["consumer"]["deploy"]["replicas"] == 3
    assert services["mongo"]["image"].startswith("mongo:7")
    assert "--replSet" in services["mongo"]["command"]
    assert "management" in services["rabbitmq"]["image"]
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
    consumer = services["consumer"]
    metrics_port = consumer["environment"]["METRICS_PORT"]
    assert f":{metrics_port}/metrics" in " ".join(consumer["healthcheck"]["test"])
    # The consumers say how they read `signed_data`; in `cms` mode, from a CA file mounted
    # read-only (`decode`, for local use, needs none).
    environment = {key: str(value) for key, value in consumer["environment"].items()}
    mode = environment.get("SIGNATURE_MODE")
    assert mode in SIGNATURE_MODES, "the consumers need SIGNATURE_MODE"
    if mode == "cms":
        ca_file = environment["SIGNATURE_CA_FILE"]
        mounts = [volume.split(":") for volume in consumer.get("volumes", [])]
        assert [ca_file, "ro"] in [mount[1:] for mount in mounts], consumer.get("volumes")


def test_nginx_balances_the_api_replicas_and_outlasts_a_long_poll() -> None:
    from service.api.views.jobs import MAX_WAIT_SECONDS

    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "http://api:8080" in config
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", config)  # replicas re-resolved
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", config).group(1))
    assert timeout > MAX_WAIT_SECONDS


def test_nginx_cuts_off_slow_clients_before_the_api_does() -> None:
    """Headers, body and response each have a timeout at the proxy, none longer than the
    API's own (HTTP_HEADER_TIMEOUT_SECONDS, HTTP_BODY_TIMEOUT_SECONDS), none shorter than a
    normal client needs (a second or more)."""
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    defaults = Settings()

    def seconds(directive: str) -> int:
        found = re.findall(rf"^\s*{directive} (\d+)s;", config, flags=re.MULTILINE)
        assert len(found) == 1, f"nginx.conf sets {directive} once, in seconds"
        return int(found[0])

    assert 1 <= seconds("client_header_timeout") <= defaults.http_header_timeout_seconds
    assert 1 <= seconds("client_body_timeout") <= defaults.http_body_timeout_seconds
    assert 1 <= seconds("send_timeout")


# --- Dockerfile ---


def test_dockerfile_is_multi_stage_non_root_with_a_liveness_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2 and all(stage.startswith("python:3.11-slim") for stage in stages)
    final = stages[-1]
    assert "--from=build" in final
    assert not re.search(r"apt-get install|gcc|build-essential", final)
    user = re.search(r"^USER (\d+)$", final, flags=re.MULTILINE)  # numeric: runAsNonRoot
    assert user and user.group(1) != "0"
    assert "/health/live" in final
    assert 'ENTRYPOINT ["medevents"]' in final and 'CMD ["api"]' in final


# --- Kubernetes examples ---


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


def test_kubernetes_manifests_match_the_service(tmp_path: Path) -> None:
    documents = k8s_documents()
    by_kind: dict[str, dict[str, dict]] = {}
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document)
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document

    known = settings_variables()
    config = by_kind["ConfigMap"]["medevents"]["data"]
    secret = by_kind["Secret"]["medevents"]["stringData"]
    environment = {**config, **secret}
    assert set(environment) <= known, set(environment) - known
    Settings.from_env(environment)  # every value is one the service accepts

    from aiohttp import web

    app = web.Application()
    setup_routes(app, builtin_registry())
    paths = {resource.canonical for resource in app.router.resources()}

    deployments = by_kind["Deployment"]
    assert set(deployments) == {"medevents-api", "medevents-consumer"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        assert pod["spec"]["terminationGracePeriodSeconds"] > STOP_TIMEOUT_SECONDS
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert f"USER {security['runAsUser']}\n" in (ROOT / "Dockerfile").read_text()
        (container,) = pod["spec"]["containers"]
        assert container["args"] == [name.removeprefix("medevents-")]
        sources = {next(iter(source.values()))["name"] for source in container["envFrom"]}
        assert sources == {"medevents"}

    api = deployments["medevents-api"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
    assert api["ports"][0]["containerPort"] == int(config["HTTP_PORT"])
    consumer_pod = deployments["medevents-consumer"]["spec"]["template"]["spec"]
    consumer = consumer_pod["containers"][0]
    assert consumer["ports"][0]["containerPort"] == int(config["METRICS_PORT"])
    check_signature_ca(config, secret, consumer_pod, tmp_path)

    service = by_kind["Service"]["medevents-api"]
    api_labels = deployments["medevents-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()

    scaled = by_kind["ScaledObject"]["medevents-consumer"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "medevents-consumer"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == Topology().queue
    assert trigger["authenticationRef"]["name"] in by_kind["TriggerAuthentication"]
    auth = by_kind["TriggerAuthentication"][trigger["authenticationRef"]["name"]]
    assert auth["spec"]["secretTargetRef"][0]["key"] == "AMQP_URL"

"""The image, built and run here: scripts/make-debian-base makes a Debian base (no registry is
reachable from the development machines, so the official python image cannot be pulled),
scripts/build-image builds both roles' images on it with buildah, and the test runs them as
their non-root user with `buildah run` against the machine's RabbitMQ (a topology of its own,
deleted afterwards) and an embedded MongoDB server started on the host: the API takes a real
submission, the consumer processes it, each image's own HEALTHCHECK passes, and the image holds
no compiler and no stand-in database.

Selected with `-m image`. On the 2-core machine: under 2 minutes from nothing (the base about
35-60 s, the build of both roles 30-40 s), about 20 s with the base and the layers cached. The
base and buildah's layer cache are kept between runs; the built images are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from service.api.auth import mint_token
from service.cli.demo import DEMO_CLIENT, DEMO_USER, write_demo_records
from service.cli.publish import with_new_ids
from service.config import Settings
from service.domain.entities import ALL_ENTITY_KINDS
from service.storage.embedded import free_port
from service.storage.entities import EntityStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from tests.conftest import TEST_SECRET
from tests.harness import EXAMPLES
from tests.image.buildah import (
    ROOT,
    WorkingContainer,
    image_config,
    image_size,
    remove_images,
    script,
    wait_until,
)
from tests.integration.webhook_harness import delete_test_topologies

pytestmark = pytest.mark.image

# Kept between runs (made again only when scripts/make-debian-base or the CA bundle changes).
BASE_IMAGE = "localhost/medevents-test-base:bookworm"
USER_ID = "10001"


@dataclass(frozen=True)
class BuiltImages:
    api: str
    consumer: str
    version: str
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def images() -> Iterator[BuiltImages]:
    """The test base (this machine's CA bundle in it, for pip), then both roles' images built
    on it by scripts/build-image; the two images are removed afterwards, the base is kept."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    run = uuid.uuid4().hex[:8]
    api = f"localhost/medevents-test-{run}:{version}"
    consumer = f"localhost/medevents-test-{run}-consumer:{version}"
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        script("ensure-image-tools", timeout=300)
        script("make-debian-base", "--host-ca", BASE_IMAGE, timeout=300)
        seconds["base"] = time.monotonic() - started
        started = time.monotonic()
        output = script(
            "build-image",
            env={"BASE_IMAGE": BASE_IMAGE, "IMAGE": api, "TARGET": "all"},
            timeout=480,
        )
        seconds["build"] = time.monotonic() - started
        # The script ends with each image's name and size.
        assert f"{api} " in output and f"{consumer} " in output, output[-2000:]
        yield BuiltImages(api, consumer, version, seconds)
    finally:
        remove_images(api, consumer)


async def _write_demo_records(url: str, database: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(url, tz_aware=True)
    try:
        db = client[database]
        await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    finally:
        await client.close()


async def _drop(url: str, database: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(url)
    try:
        await client.drop_database(database)
    finally:
        await client.close()


def _http(url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK as a command: the exec form's arguments."""
    test = image_config(image)["Healthcheck"]["Test"]
    assert test[0] == "CMD", test  # the exec form: no shell
    return test[1:]


@pytest.mark.timeout(720)
def test_the_image_serves_and_processes_a_submission_as_its_non_root_user(
    images: BuiltImages,
    mongodb_url: str,
    tmp_path: Path,
    measured: list[str],
) -> None:
    run = uuid.uuid4().hex[:12]
    database = f"test_image_{run}"
    amqp_url = os.environ.get("AMQP_URL") or Settings().amqp_url
    prefix = f"test.image.{run}."  # exchanges and queues of its own on the shared broker
    http_port, metrics_port = free_port(), free_port()
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DB": database,
        "AMQP_URL": amqp_url,
        "AMQP_PREFIX": prefix,
        "JWT_SECRET": TEST_SECRET,
        "SIGNATURE_MODE": "decode",  # the example's package is unsigned
        "HTTP_HOST": "127.0.0.1",  # the host's network: loopback only
        "HTTP_PORT": str(http_port),
        "METRICS_PORT": str(metrics_port),
    }
    asyncio.run(_write_demo_records(mongodb_url, database))
    try:
        with contextlib.ExitStack() as stack:
            api = stack.enter_context(
                WorkingContainer(images.api, f"medevents-test-{run}-api", env, tmp_path)
            )
            consumer = stack.enter_context(
                WorkingContainer(images.consumer, f"medevents-test-{run}-consumer", env, tmp_path)
            )
            _check_the_images(images, (api, consumer), measured)
            serving = api.start("medevents", "api")
            consuming = consumer.start("medevents", "consumer")
            base = f"http://127.0.0.1:{http_port}"
            wait_until(lambda: _answers(f"{base}/health/live"), "the API", 60, serving, consuming)
            wait_until(
                lambda: _answers(f"http://127.0.0.1:{metrics_port}/health/live"),
                "the consumer's /health/live",
                60,
                serving,
                consuming,
            )

            # A real submission over HTTP, polled until the consumer has processed it.
            reads = [f"{kind.entity}:read" for kind in ALL_ENTITY_KINDS]
            scopes = ["job:read", "encounter:write", *reads]
            token = mint_token(TEST_SECRET, DEMO_CLIENT, scopes, DEMO_USER, 3600)
            package = with_new_ids(json.loads((EXAMPLES / "encounter_package.json").read_text()))
            status, headers, accepted = _http(
                f"{base}/api/patients/{package['patient_id']}/encounter_package",
                token,
                json.dumps(package["data"]).encode(),
            )
            assert status == 202 and accepted["data"]["status"] == "pending", accepted
            deadline = time.monotonic() + 90
            while True:
                status, _, polled = _http(f"{base}{headers['Location']}?wait=20", token)
                if polled["data"]["status"] != "pending" or time.monotonic() > deadline:
                    break
            assert status == 303 and polled["data"]["status"] == "processed", (
                polled,
                consuming.output()[-3000:],
            )
            assert len(polled["data"]["links"]) == 11
            for link in polled["data"]["links"]:
                status, _, entity = _http(f"{base}{link['href']}", token)
                assert status == 200 and entity["data"]["id"] == link["href"].rsplit("/", 1)[-1]

            # Each image's own HEALTHCHECK, run as Docker would: in the container, its user.
            for container in (api, consumer):
                check = container.run(*_healthcheck(container.image))
                assert check.returncode == 0, (container.image, check.stderr[-2000:])

            for running in (serving, consuming):
                assert running.stop() == 0, running.output()[-3000:]
            # ... and fails once nothing answers: it checks the role, not only the container.
            for container in (api, consumer):
                assert container.run(*_healthcheck(container.image)).returncode != 0
    finally:
        asyncio.run(delete_test_topologies(amqp_url, prefix))
        asyncio.run(_drop(mongodb_url, database))


def _check_the_images(
    images: BuiltImages, made: tuple[WorkingContainer, ...], measured: list[str]
) -> None:
    """What the images are: their user, ports, version, content; their size measured."""
    for image, port in ((images.api, "HTTP_PORT"), (images.consumer, "METRICS_PORT")):
        config = image_config(image)
        assert config["User"] == USER_ID
        assert config["Labels"]["org.opencontainers.image.version"] == images.version
        assert port in " ".join(config["Healthcheck"]["Test"])
    assert set(image_config(images.api)["ExposedPorts"]) == {"8080/tcp"}
    assert set(image_config(images.consumer)["ExposedPorts"]) == {"9464/tcp"}

    for container in made:  # the user each role runs as
        who = container.run("id", "-u")
        assert who.returncode == 0 and who.stdout.strip() == USER_ID, who
    probe = made[0].run(
        "python3",
        "-c",
        "import importlib.util, json, shutil; print(json.dumps({"
        "'compilers': [c for c in ('gcc', 'cc', 'c++') if shutil.which(c)],"
        "'modules': [m for m in ('nx_27017', 'neosqlite') if importlib.util.find_spec(m)],"
        "'medevents': bool(shutil.which('medevents')),"
        "'pip': bool(importlib.util.find_spec('pip'))}))",
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {
        "compilers": [],
        "modules": [],
        "medevents": True,
        "pip": False,
    }

    # Without the stand-in (the `local` extra) and without MONGODB_URL: one line, exit 2.
    alone = made[0].run("env", "-u", "MONGODB_URL", "DATA_DIR=/tmp/medevents", "medevents", "api")
    assert alone.returncode == 2, alone
    # (buildah adds lines of its own about the exit status.)
    said = [line for line in alone.stderr.splitlines() if line.startswith("medevents")]
    assert said == [
        "medevents: configuration error: MONGODB_URL is not set and the embedded MongoDB "
        "stand-in is not installed: set MONGODB_URL to a MongoDB server, or install it with "
        "pip install 'medevents[local]'"
    ]

    size = image_size(images.api)
    assert size.endswith("MB") and float(size.split()[0]) < 300, size
    measured.append(
        f"{images.api}: {size} (its Debian base {image_size(BASE_IMAGE)}); making the base "
        f"{images.seconds['base']:.0f} s (0 when cached), building both roles "
        f"{images.seconds['build']:.0f} s"
    )

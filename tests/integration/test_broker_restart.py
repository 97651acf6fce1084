"""RabbitMQ stopped and started in the middle of a run (`rabbitmqctl stop_app` /
`start_app`): the API answers 503 while it is down, never 500; the consumer and the API's
publisher reconnect by themselves; every accepted job ends processed.

The broker stopped is a node of the session's own (`tests/rabbitmq_node.py`), never the
machine's shared RabbitMQ: every fixture of this module (`api`, `start_consumer`, the topology
clean-up) works on it through the `settings` below."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from service.config import Settings
from service.messaging.broker import DELIVERY_LIMIT, Topology
from tests.conftest import ALLOWED_SKIPS_VARIABLE, bearer
from tests.harness import ACTIVE_PATIENT, DEMO_CLIENT, RawPublisher, example, wait_for_jobs
from tests.rabbitmq_node import RabbitMQNode

WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


@pytest.fixture
def settings(settings: Settings, rabbitmq_node: RabbitMQNode) -> Settings:
    """The test's settings, on the RabbitMQ node this module stops and starts."""
    return settings.with_changes(amqp_url=rabbitmq_node.amqp_url)


def machines_broker_url() -> str:
    """The broker the rest of the suite shares with other people's processes."""
    return os.environ.get("AMQP_URL") or Settings().amqp_url


async def test_the_node_is_a_broker_of_its_own(settings, rabbitmq_node):
    """Its own name, port and connections; no plugin (no management port); and what the
    service declares works on it: quorum queues with the delivery limit."""
    shared = await aio_pika.connect(machines_broker_url())
    try:
        assert rabbitmq_node.name.startswith("medevents-test-")
        assert rabbitmq_node.name != "rabbit@localhost"
        assert settings.amqp_url == rabbitmq_node.amqp_url
        assert f":{rabbitmq_node.amqp_port}/" in settings.amqp_url
        assert rabbitmq_node.amqp_port != 5672
        status = await asyncio.to_thread(rabbitmq_node.ctl, "eval", "rabbit_plugins:active().")
        assert status.strip() == "[]"
        before = await asyncio.to_thread(rabbitmq_node.connections)
        async with RawPublisher(settings) as raw:
            opened = await asyncio.to_thread(rabbitmq_node.connections)
            assert len(opened - before) == 1  # ours, and not the one to the machine's broker
            await raw.publish(b'{"poison": true}', message_id="crashes-everything")
            queues = await asyncio.to_thread(
                rabbitmq_node.ctl, "list_queues", "name", "type", "arguments"
            )
            rows = {line.split("\t")[0]: line for line in queues.splitlines()}
            jobs = rows[Topology(settings.amqp_prefix).queue]
            assert "\tquorum\t" in jobs
            assert f'x-delivery-limit",{DELIVERY_LIMIT}' in jobs.replace(" ", ""), jobs
            assert "\tquorum\t" in rows[Topology(settings.amqp_prefix).dead_queue]
            returned = 0  # the delivery limit dead-letters, on this node as on the shared one
            while (message := await raw.queue.get(no_ack=False, fail=False)) is not None:
                await message.nack(requeue=True)
                returned += 1
                assert returned <= DELIVERY_LIMIT + 1
            assert returned == DELIVERY_LIMIT + 1
            dead = await raw.dead_letters(expected=1)
            assert [message.message_id for message in dead] == ["crashes-everything"]
        assert not shared.is_closed
    finally:
        await shared.close()


@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_the_broker_restarting_in_the_middle_of_a_run(api, db, start_consumer, rabbitmq_node):
    # A connection to the machine's shared broker, which must see none of this.
    shared = await aio_pika.connect(machines_broker_url())
    shared_channel = await shared.channel()
    await start_consumer()
    url = f"/api/patients/{ACTIVE_PATIENT}/encounter_package"
    accepted: list[str] = []
    statuses: list[int] = []

    async def submit() -> None:
        response = await api.post(url, json=example("encounter_package")["data"], headers=WRITE)
        statuses.append(response.status)
        body = await response.json()
        if response.status == 202:
            accepted.append(body["data"]["links"][0]["href"].rsplit("/", 1)[-1])
        else:
            assert body["error"]["type"] == "service_unavailable", body

    for _ in range(5):
        await submit()
    assert statuses == [202] * 5
    await asyncio.to_thread(rabbitmq_node.ctl, "stop_app")
    try:
        for _ in range(3):  # the broker is down: 503 in the envelope, no job left behind
            await submit()
        assert statuses[-3:] == [503, 503, 503]
    finally:
        await asyncio.to_thread(rabbitmq_node.ctl, "start_app")
        await asyncio.to_thread(rabbitmq_node.ctl, "await_startup")
    for _ in range(120):  # the publisher reconnects by itself
        await submit()
        if statuses[-1] == 202:
            break
        await asyncio.sleep(0.5)
    for _ in range(5):
        await submit()

    assert 500 not in statuses
    assert len(accepted) >= 11
    jobs = await wait_for_jobs(db, accepted, timeout=120)  # the consumer reconnected too
    assert [job["status"] for job in jobs.values()] == [1] * len(accepted)
    assert await db["jobs"].count_documents({"status": 0}) == 0
    # The machine's broker went on as if nothing happened.
    assert not shared.is_closed and not shared_channel.is_closed
    await shared_channel.declare_queue(exclusive=True)  # still answering
    await shared.close()


# The fault tests never pass by not running: a missing RabbitMQ fails them, and a skip fails
# the run (`tests/conftest.py`). Each checked in a pytest run of its own.

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(
    directory: Path, *plugins: str, path: str | None = None, **env: str
) -> subprocess.CompletedProcess:
    environment = {
        **{key: value for key, value in os.environ.items() if key != ALLOWED_SKIPS_VARIABLE},
        "PYTHONPATH": str(ROOT),
        **env,
    }
    if path is not None:
        environment["PATH"] = path
    arguments = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for plugin in plugins:
        arguments += ["-p", plugin]
    return subprocess.run(
        [*arguments, "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), str(directory)],
        env=environment,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_rabbitmq_the_node_tests_fail_and_never_skip(tmp_path):
    (tmp_path / "test_needs_the_node.py").write_text(
        "def test_it(rabbitmq_node):\n    raise AssertionError('never reached')\n"
    )
    without_rabbitmq = os.pathsep.join(  # PATH, but for where RabbitMQ's scripts are
        directory
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if not any((Path(directory) / name).exists() for name in ("rabbitmq-server", "rabbitmqctl"))
    )
    done = run_pytest(
        tmp_path, "tests.conftest", "tests.integration.conftest", path=without_rabbitmq
    )
    assert done.returncode == 1, done.stdout[-3000:]
    assert "RabbitMQ is not installed" in done.stdout, done.stdout[-3000:]
    assert "scripts/ensure-rabbitmq" in done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]


def test_a_skip_fails_the_run_unless_allowed_by_name(tmp_path):
    (tmp_path / "test_some.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "@pytest.mark.skip(reason='needs a tool')\n"
        "def test_skipped():\n    pass\n\n"
        "@pytest.mark.xfail(reason='known', strict=True)\n"
        "def test_expected_failure():\n    raise AssertionError\n"
    )
    skipped = "test_some.py::test_skipped"

    done = run_pytest(tmp_path, "tests.conftest")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "unexpected skips: the run fails" in done.stdout
    assert f"SKIPPED {skipped}: needs a tool" in done.stdout, done.stdout[-3000:]
    assert "test_expected_failure" not in done.stdout.split("unexpected skips")[1]

    allowed = f"other.py::x, *::test_skipped_not, {skipped}"  # node ids and patterns
    done = run_pytest(tmp_path, "tests.conftest", **{ALLOWED_SKIPS_VARIABLE: allowed})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "unexpected skips" not in done.stdout
    done = run_pytest(tmp_path, "tests.conftest", **{ALLOWED_SKIPS_VARIABLE: "test_some.py::x"})
    assert done.returncode == 1, done.stdout[-3000:]

    (tmp_path / "test_some.py").write_text(
        "import pytest\n\npytest.skip('the whole module', allow_module_level=True)\n"
    )
    (tmp_path / "test_other.py").write_text("def test_runs():\n    pass\n")
    done = run_pytest(tmp_path, "tests.conftest")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "SKIPPED test_some.py: the whole module" in done.stdout, done.stdout[-3000:]
    (tmp_path / "test_some.py").unlink()
    assert run_pytest(tmp_path, "tests.conftest").returncode == 0  # no skip: a pass, as before

"""`medevents`: the new user's first session (`medevents run` with the embedded MongoDB, the
demo token, a poll of an unknown job, the README's submissions), `medevents publish --wait`'s
exit codes, and a `run` whose consumer cannot start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jwt
import pytest

from service.cli.demo import DEMO_CLIENT, DEMO_USER
from service.cli.publish import with_new_ids
from service.config import Settings
from service.messaging.broker import Topology
from service.storage.embedded import free_port
from tests.harness import EXAMPLES
from tests.integration.webhook_harness import delete_test_topologies


def _send(url: str, token: str, body: bytes) -> tuple[int, dict, dict]:
    return _get(url, token, body)


def _get(url: str, token: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.timeout(120)
def test_new_user_session_with_the_embedded_mongodb(tmp_path) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MONGODB_URL", "JWT_SECRET", "JWT_PUBLIC_KEY"}
    }
    prefix = f"test.{uuid.uuid4().hex[:12]}."  # exchanges and queues of its own
    env.update(
        DATA_DIR=str(tmp_path / ".data"),
        HTTP_PORT=str(port),
        LOG_FORMAT="json",
        AMQP_PREFIX=prefix,
        SIGNATURE_MODE="decode",  # as `make run`: the examples' packages are unsigned
    )
    medevents = [str(Path(sys.executable).parent / "medevents")]  # the installed console script
    server = subprocess.Popen(
        [*medevents, "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def medevents_run(*args: str, **changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*medevents, *args],
            cwd=tmp_path,
            env={**env, **changes},
            capture_output=True,
            text=True,
            timeout=60,
        )

    other_prefix = f"test.{uuid.uuid4().hex[:12]}."  # no consumer there
    try:
        # The one token the README has a new user make: the demo MIS's, every scope.
        minted = medevents_run("token", "--demo")
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["client_id"], claims["sub"]) == (DEMO_CLIENT, DEMO_USER)
        deadline = time.monotonic() + 60
        while True:
            try:
                status, headers, body = _get(f"http://127.0.0.1:{port}/api/jobs/unknown", token)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.2)
        assert status == 404
        assert body["error"]["type"] == "not_found"
        assert body["meta"]["request_id"] == headers["x-request-id"]

        # The README's first submission: the example package, published and polled: exit 0.
        published = medevents_run("publish", str(EXAMPLES / "encounter_package.json"), "--wait")
        assert published.returncode == 0, published.stderr
        job_line, url_line, *final = published.stdout.splitlines()
        assert url_line == f"http://127.0.0.1:{port}/api/jobs/{job_line.split()[1]}"
        final_body = json.loads("\n".join(final))
        assert final_body["data"]["status"] == "processed"
        assert final_body["meta"]["code"] == 303
        assert len(final_body["data"]["links"]) == 11

        # A job that ends failed (404: no such patient): exit 1, the final response printed.
        failed = medevents_run(
            "publish", str(EXAMPLES / "failed_404_unknown_patient.json"), "--wait"
        )
        assert failed.returncode == 1, failed.stderr
        failed_body = json.loads("\n".join(failed.stdout.splitlines()[2:]))
        assert failed_body["data"]["status"] == "failed"
        assert failed_body["data"]["status_code"] == "404"
        assert "the job ended failed (404)" in failed.stderr

        # No consumer on the broker's names it publishes to: the wait times out, exit 3.
        untaken = medevents_run(
            "publish",
            str(EXAMPLES / "failed_404_unknown_patient.json"),
            "--wait",
            "--timeout",
            "2",
            AMQP_PREFIX=other_prefix,
        )
        assert untaken.returncode == 3, untaken.stderr
        assert "no consumer took the job in 2 s" in untaken.stderr

        # An API that cannot be reached: exit 4 (the job itself is processed meanwhile).
        unreachable = medevents_run(
            "publish",
            str(EXAMPLES / "failed_404_unknown_patient.json"),
            "--wait",
            "--timeout",
            "1",
            "--api",
            f"http://127.0.0.1:{free_port()}",
        )
        assert unreachable.returncode == 4, unreachable.stderr
        assert "cannot reach the API" in unreachable.stderr

        # Over HTTP, as the README shows, with the demo token alone: submit, long-poll once,
        # follow every link; list the client's webhooks; read the operators' figures.
        reader = token
        base = f"http://127.0.0.1:{port}"
        package = with_new_ids(json.loads((EXAMPLES / "encounter_package.json").read_text()))
        status, headers, accepted = _send(
            f"{base}/api/patients/{package['patient_id']}/encounter_package",
            reader,
            json.dumps(package["data"]).encode(),
        )
        assert status == 202 and accepted["data"]["status"] == "pending"
        assert int(headers["Retry-After"]) >= 1
        status, _, polled = _get(f"{base}{headers['Location']}?wait=30", reader)
        assert status == 303 and polled["data"]["status"] == "processed"
        for link in polled["data"]["links"]:
            status, _, entity = _get(f"{base}{link['href']}", reader)
            assert status == 200 and entity["data"]["id"] == link["href"].rsplit("/", 1)[-1]
        assert len(polled["data"]["links"]) == 11
        assert _get(f"{base}/api/webhooks", reader)[0] == 200
        assert _get(f"{base}/api/admin/stats", reader)[0] == 200

        mongo_dir = tmp_path / ".data" / "mongo"
        nx_pid = int((mongo_dir / "nx-27017.pid").read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        for declared in (prefix, other_prefix):
            asyncio.run(
                delete_test_topologies(env.get("AMQP_URL") or Settings().amqp_url, declared)
            )
    assert server.returncode == 0, output
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "embedded_mongo_started" in events and "embedded_mongo_stopped" in events
    assert not (mongo_dir / "nx-27017.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(nx_pid, 0)


@pytest.mark.timeout(90)
def test_run_stops_when_its_consumer_cannot_start(tmp_path) -> None:
    """A queue declared with other arguments (an old deployment's classic queue) makes the
    consumer's declaration fail: `medevents run` says so and stops, rather than take
    submissions that nothing would process."""
    import aio_pika

    prefix = f"test.{uuid.uuid4().hex[:12]}."
    amqp_url = os.environ.get("AMQP_URL") or Settings().amqp_url

    async def declare_classic_queue() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(Topology(prefix).queue, durable=True)

    asyncio.run(declare_classic_queue())
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URL", "JWT_SECRET"}}
    env.update(
        DATA_DIR=str(tmp_path / ".data"),
        HTTP_PORT=str(free_port()),
        LOG_FORMAT="json",
        AMQP_PREFIX=prefix,
        SIGNATURE_MODE="decode",  # signatures are not what stops it
    )
    try:
        finished = subprocess.run(
            [str(Path(sys.executable).parent / "medevents"), "run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        asyncio.run(delete_test_topologies(amqp_url, prefix))
    events = [
        json.loads(line)["event"] for line in finished.stderr.splitlines() if line.startswith("{")
    ]
    assert "consumer_failed_to_start" in events, finished.stderr[-2000:]
    assert "embedded_mongo_stopped" in events

"""How `medevents api` serves HTTP: slow clients cut off (HTTP_HEADER_TIMEOUT_SECONDS,
HTTP_BODY_TIMEOUT_SECONDS) while others are served, and a busy port reported in one line."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from service.storage.embedded import free_port
from tests.conftest import TEST_SECRET, bearer
from tests.harness import start_medevents

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
# How late a cut may come: the timer's own slack and a loaded 2-core machine.
MARGIN = 2.0
DRIBBLERS = 20  # of each kind
# Long past the bounds: a connection still open then is one the server left open.
GIVE_UP = 10.0


def _wait_until_serving(base: str, process: subprocess.Popen) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/health/live", timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, "the API did not start"
            time.sleep(0.05)
    raise AssertionError("the API did not answer in 15 s")


@pytest.fixture
def slow_api(settings, tmp_path):
    port = free_port()
    process = start_medevents(
        "api",
        settings,
        tmp_path / "data",
        JWT_SECRET=TEST_SECRET,
        HTTP_PORT=str(port),
        LOG_LEVEL="warning",
        HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        HTTP_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    )
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _dribble(port: int, head: bytes, body: bytes) -> tuple[float, bytes]:
    """Sends `head` then `body`, one byte a second (a head sent whole when `body` is not
    empty), until the server closes the connection or `GIVE_UP` seconds pass; returns the
    seconds from the start of the slow part to the close (infinity: never closed), and what
    the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read())
    if body:
        writer.write(head)
        await writer.drain()
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        for byte in body or head:
            if reading.done() or time.monotonic() - started > GIVE_UP:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([reading], timeout=1.0)
    await asyncio.wait([reading], timeout=1.0)
    closed = reading.done()
    elapsed = time.monotonic() - started
    reading.cancel()
    writer.close()
    return (elapsed if closed else math.inf), bytes(answer)


@pytest.mark.timeout(90)
async def test_slow_clients_are_cut_off_while_others_are_served(slow_api) -> None:
    port = slow_api
    patient = uuid.uuid4()
    head = (
        "GET /api/jobs/some-job HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + "".join(f"X-Dribble-{n}: {'x' * 20}\r\n" for n in range(20))
        + "\r\n"
    ).encode()
    body = b'{"visit": {}, "signed_data": "' + b"A" * 200 + b'"}'

    def post(authorization: dict[str, str]) -> bytes:
        headers = "".join(f"{name}: {value}\r\n" for name, value in authorization.items())
        return (
            f"POST /api/patients/{patient}/encounter_package HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        ).encode()

    writer = bearer(scopes=("encounter:write", "job:read"))
    heads = [_dribble(port, head, b"") for _ in range(DRIBBLERS)]
    # Half read by the handler (a 408), half refused before their body is read (a 401).
    bodies = [_dribble(port, post(writer if n % 2 else {}), body) for n in range(DRIBBLERS)]
    slow = asyncio.gather(*heads, *bodies)

    # Meanwhile, a normal request on another connection is answered at once.
    await asyncio.sleep(1.0)
    started = time.monotonic()
    reader, conn = await asyncio.open_connection("127.0.0.1", port)
    conn.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert time.monotonic() - started < 1.0

    results = await slow
    for seconds, answer in results[:DRIBBLERS]:  # the heads: closed, nothing answered
        assert seconds <= HEADER_TIMEOUT + MARGIN, seconds
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    for n, (seconds, answer) in enumerate(results[DRIBBLERS:]):
        assert seconds <= BODY_TIMEOUT + MARGIN, seconds
        if n % 2:  # read by the handler: 408 in the error envelope, then closed
            assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
            assert b'"type":"request_timeout"' in answer
        else:  # refused before its body was read: 401, then closed
            assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    # None was cut too early either (a timeout of 0 would "pass" the bounds above).
    assert min(seconds for seconds, _ in results) >= min(HEADER_TIMEOUT, BODY_TIMEOUT) - 0.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["api", "run"])
def test_a_busy_port_is_one_line_and_exit_status_2(command, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(Path(sys.executable).parent / "medevents"), command],
            env={
                "PATH": "/usr/bin:/bin",
                "HTTP_PORT": str(port),
                "DATA_DIR": str(tmp_path / "data"),
                "SIGNATURE_MODE": "decode",
                "AMQP_PREFIX": f"test.{uuid.uuid4().hex[:12]}.",
            },
            capture_output=True,
            text=True,
            timeout=50,
        )
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"medevents: port {port} on 127.0.0.1 is in use (HTTP_HOST, HTTP_PORT)"
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""  # bound before the banner: no banner, no MongoDB started
    assert not (tmp_path / "data" / "mongo").exists()

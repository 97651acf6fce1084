"""How `medevents api` serves HTTP: slow clients cut off (HTTP_HEADER_TIMEOUT_SECONDS, timed from
a head's first byte; HTTP_BODY_TIMEOUT_SECONDS, the longest a body may pause) while others are
served, idle kept-alive connections kept for HTTP_KEEPALIVE_TIMEOUT_SECONDS, and a busy port
reported in one line."""

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
KEEPALIVE_TIMEOUT = 5
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
        HTTP_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_TIMEOUT),
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


class Connection:
    """A raw client connection: what the server sent, and when it closed the connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.received = bytearray()
        self.closed_at = math.inf  # time.monotonic() of the server's close
        self._arrived = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await self._reader.read(65536):
                self.received.extend(chunk)
                self._arrived.set()
        self.closed_at = time.monotonic()
        self._arrived.set()

    async def send(self, data: bytes) -> float:
        """Sends `data`; returns when (time.monotonic()), or infinity when the server had
        closed the connection."""
        with contextlib.suppress(ConnectionError):
            self._writer.write(data)
            await self._writer.drain()
            return time.monotonic()
        return math.inf

    async def response(self, timeout: float = 5.0) -> bytes:
        """The next whole response (one with a Content-Length), taken from what arrived."""
        async with asyncio.timeout(timeout):
            while True:
                head, found, rest = bytes(self.received).partition(b"\r\n\r\n")
                if found:
                    length = int(
                        next(
                            line.split(b":", 1)[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        )
                    )
                    if len(rest) >= length:
                        whole = len(head) + 4 + length
                        answer = bytes(self.received[:whole])
                        del self.received[:whole]
                        return answer
                if self._reading.done():
                    raise AssertionError(f"closed by the server, after {bytes(self.received)!r}")
                self._arrived.clear()
                await self._arrived.wait()

    async def closed(self, timeout: float = GIVE_UP) -> float:
        """When the server closed the connection (infinity: not within `timeout` seconds)."""
        await asyncio.wait([self._reading], timeout=timeout)
        return self.closed_at

    def close(self) -> None:
        self._reading.cancel()
        self._writer.close()


LIVE = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _served_at_once(port: int) -> None:
    """A normal request on a connection of its own is answered at once."""
    started = time.monotonic()
    conn = await Connection.open(port)
    await conn.send(LIVE)
    answer = await conn.response()
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert time.monotonic() - started < 1.0


@pytest.mark.timeout(60)
async def test_a_head_is_timed_from_its_first_byte_and_idle_keep_alive_is_not_cut(
    slow_api,
) -> None:
    port = slow_api
    # A connection answered, then idle past the header timeout, is still open and answers
    # again (before: closed HTTP_HEADER_TIMEOUT_SECONDS after its response).
    reused = await Connection.open(port)
    await reused.send(LIVE)
    assert (await reused.response()).startswith(b"HTTP/1.1 200")
    # Another, left idle after its answer: closed at the keep-alive timeout.
    idle = await Connection.open(port)
    await idle.send(LIVE)
    assert (await idle.response()).startswith(b"HTTP/1.1 200")
    answered = time.monotonic()
    # A third, idle past the header timeout too, then dribbling a head: cut at the header
    # timeout after the head's first byte.
    dribbler = await Connection.open(port)
    await dribbler.send(LIVE)
    assert (await dribbler.response()).startswith(b"HTTP/1.1 200")
    # A new connection that never sends a byte: cut at the header timeout after it opened.
    opened = time.monotonic()
    silent = await Connection.open(port)

    await asyncio.sleep(HEADER_TIMEOUT + 1.5)
    assert await reused.send(LIVE) < math.inf
    assert (await reused.response()).startswith(b"HTTP/1.1 200")
    assert reused.closed_at == math.inf

    first_byte = await dribbler.send(LIVE[:1])
    assert first_byte < math.inf, "closed while idle, before the head began"
    for byte in LIVE[1:20]:
        await asyncio.sleep(0.5)
        if await dribbler.send(bytes([byte])) == math.inf:
            break
    await _served_at_once(port)  # meanwhile
    cut = await dribbler.closed() - first_byte
    assert HEADER_TIMEOUT - 0.5 <= cut <= HEADER_TIMEOUT + MARGIN, cut
    assert dribbler.received == b""  # nothing answered to a head never finished

    silent_cut = await silent.closed() - opened
    assert HEADER_TIMEOUT - 0.5 <= silent_cut <= HEADER_TIMEOUT + MARGIN, silent_cut

    idle_for = await idle.closed() - answered
    assert KEEPALIVE_TIMEOUT - 0.5 <= idle_for <= KEEPALIVE_TIMEOUT + MARGIN, idle_for
    for conn in (reused, idle, dribbler, silent):
        conn.close()


@pytest.mark.timeout(60)
async def test_a_slow_steady_body_is_read_and_a_stalled_one_is_answered_408(slow_api) -> None:
    port = slow_api
    writer = bearer(scopes=("encounter:write", "job:read"))
    chunk, chunks = 12 * 1024, 8  # 24 KiB/s: over the minimum rate of 16 KiB/s
    # Whitespace inside a JSON array: read whole, then refused as not an object (422).
    body = b"[" + b" " * (chunk * chunks - 2) + b"]"
    head = (
        f"POST /api/patients/{uuid.uuid4()}/encounter_package HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: {writer['Authorization']}\r\n\r\n"
    ).encode()

    async def steady() -> tuple[float, bytes]:
        conn = await Connection.open(port)
        started = await conn.send(head)
        for n in range(chunks):  # a chunk every 0.5 s: 3.5 s, past the old total of 2 s
            if n:
                await asyncio.sleep(0.5)
            await conn.send(body[n * chunk : (n + 1) * chunk])
        answer = await conn.response(timeout=GIVE_UP)
        conn.close()
        return time.monotonic() - started, answer

    async def stalled() -> tuple[float, bytes, float]:
        conn = await Connection.open(port)
        await conn.send(head)
        last_byte = 0.0
        for n in range(4):  # 1.5 s of progress, then nothing
            if n:
                await asyncio.sleep(0.5)
            last_byte = await conn.send(body[n * chunk : (n + 1) * chunk])
        answer = await conn.response(timeout=GIVE_UP)
        answered = time.monotonic()
        closed = await conn.closed()
        conn.close()
        return answered - last_byte, answer, closed

    both = asyncio.gather(steady(), stalled())
    await asyncio.sleep(1.0)
    await _served_at_once(port)  # meanwhile
    (took, answer), (quiet, refused, closed) = await both

    assert answer.startswith(b"HTTP/1.1 422"), answer[:300]  # read whole, not cut
    assert took >= (chunks - 1) * 0.5 > BODY_TIMEOUT
    # Answered 408 at the idle timeout after the last byte (before: 2 s after the head,
    # 0.5 s after the last byte), in the error envelope, and the connection closed.
    assert refused.startswith(b"HTTP/1.1 408"), refused[:300]
    assert b'"type":"request_timeout"' in refused
    assert BODY_TIMEOUT - 0.2 <= quiet <= BODY_TIMEOUT + MARGIN, quiet
    assert closed < math.inf


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

"""The embedded MongoDB wire-protocol server (nx-27017) for local use and tests.

Used only when `MONGODB_URL` is unset. No MongoDB server can be installed on the development
machines, so `nx-27017` (MongoDB's wire protocol over SQLite) stands in: the real PyMongo
driver talks to it, and the production code path is the one exercised.

The server runs as a child process bound to loopback, with its data under `DATA_DIR/mongo/`.
Its pid and port are kept there too, so a second `medevents` process (the consumer beside the
API) attaches to the running server instead of starting another on the same files; only the
process that started it stops it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import structlog

from service.config import ConfigError

log = structlog.get_logger("medevents.embedded_mongo")

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _accepts_connections(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


NOT_INSTALLED = (
    "MONGODB_URL is not set and the embedded MongoDB stand-in is not installed: "
    "set MONGODB_URL to a MongoDB server, or install it with pip install 'medevents[local]'"
)


class EmbeddedMongoError(RuntimeError):
    pass


class EmbeddedMongo:
    """Start (or attach to) an nx-27017 server; `with EmbeddedMongo(dir) as url: ...`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve() / "mongo"
        self._requested_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nx-27017.pid"

    @property
    def port_file(self) -> Path:
        return self.data_dir / "nx-27017.port"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nx-27017.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedMongoError("the embedded MongoDB server is not running")
        return f"mongodb://{LOOPBACK}:{self.port}/"

    @property
    def owned(self) -> bool:
        return self._process is not None

    def start(self, timeout: float = 30.0) -> str:
        """Make sure a server runs for this data directory; returns its URL."""
        if importlib.util.find_spec("nx_27017") is None:
            # The stand-in is the `local` extra, not in the image: production names a server.
            raise ConfigError(NOT_INSTALLED)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self._running_server()
        if running is not None:
            self.port = running
            log.info("embedded_mongo_attached", port=running, data_dir=str(self.data_dir))
            return self.url
        for stale in (self.pid_file, self.port_file):  # left by a server that is gone
            stale.unlink(missing_ok=True)
        port = self._requested_port or free_port()
        command = [
            sys.executable,
            "-c",
            "import sys; from nx_27017.nx_27017 import main; sys.exit(main())",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        ]
        # The server writes its own log file. A session of its own: Ctrl-C in a terminal
        # reaches us, and we stop the server after the service closed its connections.
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not _accepts_connections(port):
            if self._process.poll() is not None:
                self._process = None
                raise EmbeddedMongoError(
                    f"nx-27017 exited at start; its log is {self.log_file}; "
                    f"to see why, run: {shlex.join(command)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedMongoError(f"nx-27017 did not listen on port {port} in {timeout}s")
            time.sleep(0.05)
        self.port = port
        self.pid_file.write_text(str(self._process.pid))
        self.port_file.write_text(str(port))
        log.info(
            "embedded_mongo_started", port=port, pid=self._process.pid, data_dir=str(self.data_dir)
        )
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if this object started it; an attached server is left running."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for path in (self.pid_file, self.port_file):
            path.unlink(missing_ok=True)
        log.info("embedded_mongo_stopped", pid=process.pid)

    def _running_server(self) -> int | None:
        """The port of a live server left by another process for this directory, if any."""
        try:
            pid = int(self.pid_file.read_text())
            port = int(self.port_file.read_text())
        except (OSError, ValueError):
            return None
        if _process_alive(pid) and _accepts_connections(port):
            return port
        return None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

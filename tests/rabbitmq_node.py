"""A RabbitMQ node of the tests' own, for the fault tests that stop a broker or cut its
connections: the machine's RabbitMQ (127.0.0.1:5672) is shared with other people's processes,
and no test may stop it or close a connection it did not open.

The node has a name of its own (`medevents-test-<random>@localhost`), an AMQP port and an Erlang
distribution port picked free (epmd stays the machine's, on its default port), its data, logs,
pid file, configuration and Erlang cookie under a directory of the test session's, and no
plugins (the management plugin would take port 15672). It runs as the user running the tests:
the Debian wrapper scripts (`/usr/sbin/rabbitmq-server`, which switch to the `rabbitmq` user)
are bypassed for the scripts they wrap. It is stopped and its directory removed afterwards.

A missing RabbitMQ is an error, never a skip: `scripts/ensure-rabbitmq` installs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.storage.embedded import free_port

START_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 60
CTL_TIMEOUT_SECONDS = 120

MISSING = (
    "RabbitMQ is not installed (no `rabbitmq-server` / `rabbitmqctl` on PATH): the fault tests "
    "start a RabbitMQ node of their own and cannot run without it. Install it with "
    "`scripts/ensure-rabbitmq` (as root) or `sudo apt-get install -y rabbitmq-server`."
)


class RabbitMQUnavailable(RuntimeError):
    """RabbitMQ is not installed, or the node did not start."""


def rabbitmq_scripts() -> tuple[Path, Path]:
    """`rabbitmq-server` and `rabbitmqctl`, as scripts that run as the calling user (Debian's
    `/usr/sbin` ones are a wrapper that switches to the `rabbitmq` user)."""
    found = [shutil.which(name) for name in ("rabbitmq-server", "rabbitmqctl")]
    if None in found:
        raise RabbitMQUnavailable(MISSING)
    scripts = []
    for name, path in zip(("rabbitmq-server", "rabbitmqctl"), found, strict=True):
        real = Path(path).resolve()
        if real.name == "rabbitmq-script-wrapper":  # Debian: the wrapped script is beside it
            real = (real.parent / name).resolve()
        if not real.is_file():
            raise RabbitMQUnavailable(f"{MISSING} ({real} is missing)")
        scripts.append(real)
    return scripts[0], scripts[1]


@dataclass
class RabbitMQNode:
    """A running node: its name, ports and AMQP URL, and `rabbitmqctl` aimed at it alone."""

    name: str
    amqp_port: int
    dist_port: int
    base: Path
    ctl_script: Path
    env: dict[str, str] = field(repr=False)
    started_in_s: float = 0.0

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_SECONDS) -> str:
        """`rabbitmqctl -n NODE ARGS` (never the machine's node); raises on failure."""
        done = subprocess.run(
            [str(self.ctl_script), "-q", "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} exited {done.returncode}: "
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def connections(self) -> set[str]:
        """The pids of the client connections open on this node (and on no other)."""
        listed = self.ctl("list_connections", "pid")
        return {line.strip() for line in listed.splitlines() if line.strip().startswith("<")}

    def close_connection(self, pid: str, reason: str = "closed by a test") -> None:
        self.ctl("close_connection", pid, reason)

    def log_tail(self, characters: int = 4000) -> str:
        logs = [*sorted((self.base / "log").glob("*.log")), self.base / "server.out"]
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}"
            for path in logs
            if path.exists()
        )


def _node_environment(base: Path, name: str, amqp_port: int, dist_port: int) -> dict[str, str]:
    home = base / "home"
    home.mkdir(parents=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)))
    cookie.chmod(0o400)
    for directory in ("mnesia", "log"):
        (base / directory).mkdir()
    (base / "enabled_plugins").write_text("[].\n")  # no management plugin on port 15672
    (base / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq one
    (base / "advanced.config").write_text("[].\n")
    # Not /etc/rabbitmq/rabbitmq.conf, whose listener is the shared broker's port 5672.
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{amqp_port}\nlog.console = false\nlog.file.level = info\n"
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RABBITMQ_", "ERL_", "AMQP_"))
    }
    environment.update(
        {
            "HOME": str(home),  # its own Erlang cookie, for the node and rabbitmqctl
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # Where epmd listens if this node is the one to start it (the port stays 4369).
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
    )
    return environment


@contextlib.contextmanager
def rabbitmq_node(base: Path) -> Iterator[RabbitMQNode]:
    """Start a RabbitMQ node of its own under `base` (an empty or missing directory), wait
    until it accepts work, yield it; stop it and remove `base` afterwards."""
    server_script, ctl_script = rabbitmq_scripts()
    base.mkdir(parents=True, exist_ok=True)
    name = f"medevents-test-{secrets.token_hex(4)}@localhost"
    amqp_port, dist_port = free_port(), free_port()
    while dist_port == amqp_port:
        dist_port = free_port()
    env = _node_environment(base, name, amqp_port, dist_port)
    node = RabbitMQNode(name, amqp_port, dist_port, base, ctl_script, env)
    started = time.monotonic()
    with (base / "server.out").open("ab") as output:
        process = subprocess.Popen(
            [str(server_script)],
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ours to kill, if it comes to that
            preexec_fn=_stopped_with_this_process(),
        )
    try:
        _await_startup(node, process, started)
        node.started_in_s = time.monotonic() - started
        yield node
    finally:
        _stop(node, process)
        shutil.rmtree(base, ignore_errors=True)


def _stopped_with_this_process():
    """On Linux, the node gets SIGTERM (and stops itself) if the test process dies without
    stopping it (killed, or `os._exit` by a timeout): no node left running."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def preexec() -> None:
        prctl(set_parent_death_signal, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def _await_startup(node: RabbitMQNode, process: subprocess.Popen, started: float) -> None:
    deadline = started + START_TIMEOUT_SECONDS
    last_error = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RabbitMQUnavailable(
                f"RabbitMQ node {node.name} exited with {process.returncode} while starting:\n"
                + node.log_tail()
            )
        try:  # fails at once while the node is not yet registered with epmd
            node.ctl("await_startup", "--timeout", "30", timeout=60)
            return
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            last_error = str(exc)
        time.sleep(0.5)
    raise RabbitMQUnavailable(
        f"RabbitMQ node {node.name} did not start within {START_TIMEOUT_SECONDS} s: "
        f"{last_error}\n{node.log_tail()}"
    )


def _stop(node: RabbitMQNode, process: subprocess.Popen) -> None:
    """`rabbitmqctl -n NODE stop`; the node's own process group killed if that fails."""
    if process.poll() is None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            node.ctl("stop", str(node.base / "node.pid"), timeout=STOP_TIMEOUT_SECONDS)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group this node was started in
        process.wait(timeout=10)

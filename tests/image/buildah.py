"""buildah, as the image tests use it: images built by the project's scripts, working
containers made from them, commands run in those containers (`buildah run --isolation chroot
--network host`: no Docker engine and no other runtime is needed), each stopped for sure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN_OPTIONS = ("--isolation", "chroot", "--network", "host")


def buildah(*args: str, timeout: float = 60) -> str:
    """`buildah ARGS`'s standard output; fails with its standard error."""
    finished = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert finished.returncode == 0, f"buildah {' '.join(args)}: {finished.stderr[-2000:]}"
    return finished.stdout


def script(name: str, *args: str, env: Mapping[str, str] | None = None, timeout: float) -> str:
    """One of the project's scripts (scripts/NAME), its output (both streams) returned."""
    finished = subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert finished.returncode == 0, f"scripts/{name} failed:\n{finished.stdout[-4000:]}"
    return finished.stdout


def image_config(image: str) -> dict[str, Any]:
    """The Docker-format configuration of `image` (Healthcheck, ExposedPorts, Labels, ...)."""
    return json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]


def image_size(image: str) -> str:
    """The size `buildah images` shows for `image` ("174 MB")."""
    return buildah("images", "--format", "{{.Size}}", image).splitlines()[0].strip()


def remove_images(*images: str) -> None:
    for image in images:
        subprocess.run(["buildah", "rmi", image], capture_output=True, timeout=60, check=False)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The parent is the field after the command's parenthesised name.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, nearest first."""
    children = _children()
    found: list[int] = []
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop(0)
        found.append(child)
        pending.extend(children.get(child, []))
    return found


class Running:
    """A command running in a working container (`buildah run`), its output in a file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM to the command itself (buildah's own processes would kill it at once, not
        let it drain), then SIGKILL to all of it if it has not ended within `timeout`."""
        if self.process.poll() is None:
            tree = descendants(self.process.pid)
            leaves = [pid for pid in tree if not descendants(pid)] or [self.process.pid]
            for pid in leaves:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in [*reversed(descendants(self.process.pid)), self.process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


class WorkingContainer:
    """A working container of `image` (`buildah from`), the environment of its commands."""

    def __init__(self, image: str, name: str, env: Mapping[str, str], logs: Path) -> None:
        self.image = image
        self.name = name
        self.env = dict(env)
        self.logs = logs
        self.started: list[Running] = []

    def __enter__(self) -> WorkingContainer:
        buildah("from", "--pull=never", "--quiet", "--name", self.name, self.image)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for running in self.started:
                running.stop()
        finally:
            subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60)

    def _command(self, argv: Sequence[str]) -> list[str]:
        env = [option for key, value in self.env.items() for option in ("--env", f"{key}={value}")]
        return ["buildah", "run", *RUN_OPTIONS, *env, self.name, "--", *argv]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`argv` in the container, as the image's user, waited for."""
        return subprocess.run(
            self._command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, *argv: str) -> Running:
        """`argv` in the container, left running (stopped when the container is left)."""
        log = self.logs / f"{self.name}.{len(self.started)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(self._command(argv), stdout=output, stderr=subprocess.STDOUT)
        running = Running(process, log)
        self.started.append(running)
        return running


def wait_until(check: Callable[[], Any], what: str, timeout: float, *alive: Running) -> Any:
    """`check()`'s first true value within `timeout` seconds; fails early, with the command's
    output, when one of `alive` has ended."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            value = check()
            if value:
                return value
        for running in alive:
            assert running.alive(), f"{what}: the command ended:\n{running.output()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.3)

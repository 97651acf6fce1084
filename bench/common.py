"""What the benchmark scripts share."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def service_env(
    mongodb_url: str, db_name: str, prefix: str, secret: str, data_dir: str, **extra: str
) -> dict[str, str]:
    """The environment of a `medevents` process under benchmark: its own database and
    exchanges and queues, quiet logs unless told otherwise, no metrics port."""
    return {
        **os.environ,
        "MONGODB_URL": mongodb_url,
        "MONGODB_DB": db_name,
        "AMQP_URL": AMQP_URL,
        "AMQP_PREFIX": prefix,
        "JWT_SECRET": secret,
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        "METRICS_PORT": "0",
        "DATA_DIR": data_dir,
        **extra,
    }


def start_medevents(command: str, env: dict[str, str]) -> subprocess.Popen:
    """`medevents COMMAND` of this virtualenv in a process of its own, its output discarded."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "medevents"), command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_up(url: str, attempts: int = 300, *, any_status: bool = False) -> None:
    """Until `url` answers 200, or answers at all with `any_status` (a process just started)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(attempts):
            try:
                async with http.get(url) as response:
                    await response.read()
                    if any_status or response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# The wrk scripts (Lua) of the benchmarks that wrk drives.
WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"


@dataclass
class WrkResult:
    """One wrk run, from the `WRK {json}` line its script's `done` prints (bench/wrk/*.lua):
    requests, latency percentiles (wrk measures them in µs), and its error counts: `status`
    is wrk's count of answers that are not 2xx or 3xx, the others socket errors."""

    fields: dict[str, Any]

    @property
    def requests(self) -> int:
        return int(self.fields["requests"])

    @property
    def rps(self) -> float:
        return self.requests / (self.fields["duration_us"] / 1e6)

    @property
    def p50_ms(self) -> float:
        return self.fields["p50_us"] / 1000

    @property
    def p99_ms(self) -> float:
        return self.fields["p99_us"] / 1000

    def errors(self) -> dict[str, int]:
        return {
            name: int(self.fields[name])
            for name in ("status", "connect", "read", "write", "timeout")
            if self.fields.get(name)
        }

    @property
    def failed(self) -> bool:
        return bool(self.errors())

    def failures(self) -> str:
        names = {"status": "answers not 2xx/3xx", "timeout": "timeouts"}
        return ", ".join(
            f"{count} {names.get(name, name + ' errors')}" for name, count in self.errors().items()
        )


def wrk_command(
    script: Path,
    url: str,
    script_args: list[str],
    *,
    connections: int,
    seconds: int,
    threads: int = 1,
    timeout: int = 5,
) -> list[str]:
    """wrk's command line: `threads` threads, `connections` connections, `seconds` (whole
    seconds: wrk takes no fractions), `script` with `script_args` after `--`."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout}s",
        "-s",
        str(script),
        url,
        "--",
        *script_args,
    ]


def parse_wrk(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("WRK "):
            return WrkResult(json.loads(line[4:]))
    raise RuntimeError(f"wrk printed no WRK line:\n{output}")


def run_wrk(
    script: Path,
    url: str,
    script_args: list[str],
    *,
    connections: int,
    seconds: int,
    threads: int = 1,
    cpus: set[int] | None = None,
) -> WrkResult:
    """One wrk run, on `cpus` when given (its own cores, off the server measured)."""
    command = wrk_command(
        script, url, script_args, connections=connections, seconds=seconds, threads=threads
    )
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    return parse_wrk(completed.stdout)


def stop_processes(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM to every process, then wait for each; SIGKILL to one that outlives `timeout`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""What the benchmark scripts share."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

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

"""`/health/live` beside `/metrics` on METRICS_PORT, for `medevents consumer` and
`medevents webhooks`: 200 while the event loop beats, 503 once it has been blocked for longer
than LIVENESS_STALL_SECONDS, 200 again when it runs again; asked over HTTP, as a kubelet
does."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from consumers.processors import builtin_registry
from consumers.worker import run_consumer
from service.bootstrap import Services
from service.config import Settings
from service.storage.embedded import free_port
from service.webhooks_delivery import run_webhooks
from tests.harness import start_medevents

RUNNERS = {"consumer": run_consumer, "webhooks": run_webhooks}


def probe(url: str) -> tuple[int, str]:
    """The status and body of a GET, whatever the status; (0, why) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def until_answered(url: str, timeout: float = 20.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await asyncio.to_thread(probe, url)
        if status or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("command", sorted(RUNNERS))
async def test_a_blocked_event_loop_fails_the_probe_until_it_runs_again(
    settings: Settings, db, command: str
) -> None:
    port = free_port()
    stall = 1
    own = settings.with_changes(metrics_port=port, liveness_stall_seconds=stall)
    stop = asyncio.Event()
    running = asyncio.create_task(RUNNERS[command](Services(own, builtin_registry()), stop))
    live = f"http://127.0.0.1:{port}/health/live"
    try:
        status, body = await until_answered(live)
        assert (status, body.split(":")[0]) == (200, "live"), body
        status, metrics = await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "process_cpu_seconds_total" in metrics

        # Block the loop (a synchronous call in a coroutine) for three stall limits while a
        # thread keeps probing, as a kubelet would.
        seen: list[tuple[float, int, str]] = []
        probing = threading.Event()

        def keep_probing() -> None:
            started = time.monotonic()
            while not probing.is_set():
                status, body = probe(live)
                seen.append((time.monotonic() - started, status, body))
                time.sleep(0.1)

        prober = threading.Thread(target=keep_probing)
        prober.start()
        time.sleep(3 * stall)  # noqa: ASYNC251 (the event loop is stuck here, on purpose)
        probing.set()
        prober.join()

        assert seen[0][1] == 200, seen[0]  # fresh when the block began
        stalled = [(at, body) for at, status, body in seen if status == 503]
        assert stalled, seen
        # Past the limit (less the heartbeat's last interval, at most 0.25 s here), and well
        # before the block ended.
        assert stall - 0.3 <= stalled[0][0] < 2 * stall, seen
        assert stalled[-1][1].startswith("event loop stalled: no heartbeat for"), stalled[-1]
        assert "LIVENESS_STALL_SECONDS=1" in stalled[-1][1]
        # Each answer agrees with the heartbeat's age it reports (to its two decimals): 200 up
        # to the limit, 503 past it.
        for _, status, body in seen:
            reported = re.search(r"([0-9.]+) s", body)
            assert reported is not None, body
            age = float(reported.group(1))
            assert status in (200, 503), body
            if age < stall - 0.01:
                assert status == 200, body
            elif age > stall:
                assert status == 503, body

        await asyncio.sleep(0.3)  # the loop runs: the heartbeat is fresh again
        status, body = await asyncio.to_thread(probe, live)
        assert status == 200, body
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    # Stopped with the process's services: the port is free again.
    assert (await asyncio.to_thread(probe, live))[0] == 0


@pytest.mark.parametrize("command", sorted(RUNNERS))
def test_the_processes_serve_liveness_beside_their_metrics(settings, db, tmp_path, command):
    port = free_port()
    process = start_medevents(
        command, settings, tmp_path / "data", METRICS_PORT=str(port), SIGNATURE_MODE="decode"
    )
    try:
        for _ in range(200):
            status, body = probe(f"http://127.0.0.1:{port}/health/live")
            if status:
                break
            assert process.poll() is None, "the process ended"
            time.sleep(0.1)
        assert status == 200 and body.startswith("live: event loop heartbeat"), body
        status, metrics = probe(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "medevents_jobs_finished_total" in metrics
        assert "_created" not in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_the_stall_limit_is_checked() -> None:
    assert Settings.from_env({}).liveness_stall_seconds == 10
    assert Settings.from_env({"LIVENESS_STALL_SECONDS": "3"}).liveness_stall_seconds == 3
    for wrong in ("0", "-1", "ten", "1.5", "3601"):
        with pytest.raises(ValueError, match="LIVENESS_STALL_SECONDS"):
            Settings.from_env({"LIVENESS_STALL_SECONDS": wrong})

"""What the largest hostile submissions cost the consumer: time, memory, and the wait they
impose on a valid package processed beside them.

    .venv/bin/python bench/hostile_input.py

Each case runs in a process of its own (so that its memory figures are its own), through the
real `SubmissionProcessor` on the embedded MongoDB server. A valid example package starts
10 ms after the hostile one; the figures are:
  hostile   seconds until the hostile job ended
  valid     seconds from when the valid package was due until its job ended (~0.03 s alone)
  pause     the longest the event loop went without running a 5 ms timer (heartbeats, acks
            and every other job wait that long)
  RSS       resident memory before, at the end, and its growth (MiB)
Cases: `{"observations": [{}, ...]}` signed content in a 1 MiB and a 250 KB message (the probe
of issue 15), and 50 observations of 100 failing components each (the most the schemas let
through to item checks).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.processors import builtin_registry
from service.cli.demo import write_demo_records
from service.cli.publish import with_new_ids
from service.domain.jobs import new_job_id
from service.observability.logs import configure_logging
from service.signatures import Base64JsonDecoder, encode_unsigned
from service.storage.embedded import EmbeddedMongo
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.patients import PatientStore
from service.storage.registries import RegistryStore
from service.usecases.processing import Delivery, SubmissionProcessor

EXAMPLE = orjson.loads(
    (Path(__file__).resolve().parents[1] / "examples/encounter_package.json").read_bytes()
)


def with_content(content: dict) -> bytes:
    submission = with_new_ids(EXAMPLE)
    submission["data"]["signed_data"] = encode_unsigned(content)
    return orjson.dumps(submission)


def empty_observations(message_bytes: int) -> bytes:
    return with_content({"observations": [{}] * (message_bytes * 3 // 4 // 3)})


def failing_components() -> bytes:
    observation = {"id": 1, "components": [{"code": 1, "value_string": 2}] * 100}
    return with_content({"encounter": {"id": 1}, "observations": [observation] * 50})


CASES = {
    "1 MiB of empty observations": lambda: empty_observations(1024 * 1024),
    "250 KB of empty observations": lambda: empty_observations(250 * 1000),
    "50 observations x 100 failing components": failing_components,
}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(url: str, body: bytes) -> dict[str, float]:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(url, tz_aware=True)
    db = client[f"bench_{new_job_id()}"]
    registries = RegistryStore(db)
    await write_demo_records(PatientStore(db), registries, EntityStore(db))
    await EntityStore(db).ensure_indexes()
    processor = SubmissionProcessor(
        JobStore(db),
        EntityStore(db),
        PatientStore(db),
        builtin_registry(),
        registries=registries,
        signatures=Base64JsonDecoder(),
    )
    warm = orjson.dumps(with_new_ids(EXAMPLE))
    await processor.process(Delivery(new_job_id(), warm))  # imports, caches, connections
    before = rss_mib()
    longest, done = 0.0, asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    async def finished_at(delivery: Delivery, delay: float) -> float:
        await asyncio.sleep(delay)
        await processor.process(delivery)
        return time.perf_counter()

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    hostile_task = asyncio.create_task(finished_at(Delivery(new_job_id(), body), 0))
    valid_delivery = Delivery(new_job_id(), orjson.dumps(with_new_ids(EXAMPLE)))
    # The valid package is due 10 ms after the hostile one: its wait counts from then, not
    # from when a blocked loop lets its task start.
    valid = await finished_at(valid_delivery, 0.01) - (started + 0.01)
    hostile = await hostile_task - started
    done.set()
    await ticking
    after = rss_mib()
    await client.drop_database(db.name)
    await client.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "hostile": hostile,
        "valid": valid,
        "pause": longest,
        "before": before,
        "after": after,
        "peak": peak,
    }


def run_case(url: str, name: str, queue: multiprocessing.Queue) -> None:
    configure_logging("json", "critical")
    queue.put(asyncio.run(measure(url, CASES[name]())))


def main() -> None:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as data, EmbeddedMongo(Path(data)) as url:
        print(
            f"{'case':44} {'bytes':>9} {'hostile s':>9} {'valid s':>8} {'pause s':>8} "
            f"{'RSS MiB before/after/peak':>26}"
        )
        for name, build in CASES.items():
            queue = context.Queue()
            process = context.Process(target=run_case, args=(url, name, queue))
            process.start()
            figures = queue.get(timeout=600)
            process.join()
            print(
                f"{name:44} {len(build()):>9,} {figures['hostile']:>9.2f} {figures['valid']:>8.2f}"
                f" {figures['pause']:>8.3f} {figures['before']:>8.0f} / {figures['after']:>5.0f}"
                f" / {figures['peak']:>5.0f}"
            )


if __name__ == "__main__":
    main()

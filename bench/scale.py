"""Scale-out throughput: N submissions over HTTP, to terminal, with 1 API and 1 consumer
process, then with 2 API and 3 consumer processes, on one broker and one MongoDB server.

    .venv/bin/python bench/scale.py [--jobs 3000]

Prints jobs/s (first submission to last terminal job) for both, their ratio, and the checks:
every job processed, attempts 1, entity counts exact.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import AMQP_URL, service_env, start_medevents, wait_up  # noqa: E402
from service.api.auth import mint_token  # noqa: E402
from service.cli.demo import DEMO_CLIENT, DEMO_USER, write_demo_records  # noqa: E402
from service.cli.publish import with_new_ids  # noqa: E402
from service.domain.entities import ALL_ENTITY_KINDS, VISIT  # noqa: E402
from service.messaging.broker import Topology, delete_topology  # noqa: E402
from service.storage.embedded import EmbeddedMongo, free_port  # noqa: E402
from service.storage.entities import EntityStore  # noqa: E402
from service.storage.patients import PatientStore  # noqa: E402
from service.storage.registries import RegistryStore  # noqa: E402

EXAMPLE = orjson.loads((ROOT / "examples/encounter_package.json").read_bytes())
SECRET = "scale-benchmark-secret-scale-benchmark-se"
# What a package writes: its entities and its visit, one of each in the example.
WRITTEN_KINDS = (*ALL_ENTITY_KINDS, VISIT)


async def run(mongodb_url: str, apis: int, consumers: int, jobs: int, data_dir: str) -> dict:
    db_name, prefix = f"scale_{uuid.uuid4().hex[:8]}", f"scale.{uuid.uuid4().hex[:8]}."
    client = AsyncMongoClient(mongodb_url, tz_aware=True)
    db = client[db_name]
    # The patients and registry records the example refers to (`service.cli.demo`).
    await write_demo_records(PatientStore(db), RegistryStore(db), EntityStore(db))
    ports = [free_port() for _ in range(apis)]
    # The example's packages are unsigned: the consumers decode them, verifying nothing.
    env = service_env(mongodb_url, db_name, prefix, SECRET, data_dir, SIGNATURE_MODE="decode")
    processes = [start_medevents("api", {**env, "HTTP_PORT": str(port)}) for port in ports] + [
        start_medevents("consumer", env) for _ in range(consumers)
    ]
    try:
        for port in ports:
            await wait_up(f"http://127.0.0.1:{port}/health/ready")
        token = mint_token(SECRET, DEMO_CLIENT, ["job:read", "encounter:write"], DEMO_USER, 3600)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        urls = itertools.cycle(
            f"http://127.0.0.1:{port}/api/patients/{EXAMPLE['patient_id']}/encounter_package"
            for port in ports
        )
        bodies = [orjson.dumps(with_new_ids(EXAMPLE)["data"]) for _ in range(jobs)]
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:

            async def submit(body: bytes) -> None:
                async with http.post(next(urls), data=body, headers=headers) as response:
                    assert response.status == 202, await response.text()

            await asyncio.gather(*(submit(body) for body in bodies))
        while await db["jobs"].count_documents({"status": {"$ne": 0}}) < jobs:
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        processed = await db["jobs"].count_documents({"status": 1, "attempts": 1})
        entities = {
            kind.collection: await db[kind.collection].count_documents({}) for kind in WRITTEN_KINDS
        }
        return {"rate": jobs / elapsed, "processed": processed, "entities": entities}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        await client.drop_database(db_name)
        await client.close()
        await delete_topology(AMQP_URL, Topology(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    expected = {kind.collection: args.jobs for kind in WRITTEN_KINDS}
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedMongo(Path(data_dir)) as url:
        rates = {}
        for apis, consumers in ((1, 1), (2, 3)):
            result = asyncio.run(run(url, apis, consumers, args.jobs, data_dir))
            rates[(apis, consumers)] = result["rate"]
            exact = result["processed"] == args.jobs and result["entities"] == expected
            print(
                f"{apis} API, {consumers} consumer(s): {args.jobs} jobs, "
                f"{result['rate']:.1f} jobs/s; processed once, entities exact: {exact}",
                flush=True,
            )
        print(f"ratio 2+3 / 1+1 = {rates[(2, 3)] / rates[(1, 1)]:.2f}")


if __name__ == "__main__":
    main()

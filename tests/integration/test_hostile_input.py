"""What a hostile or careless sender found (issue 15, items 1, 2, 3 and 6), each end to end on
the real broker and MongoDB: bounded work for a package of many small items, off the event
loop; a message that cannot end another client's job; deep JSON refused, never a 500 or a
lost message; no reply into the service's own queues."""

from __future__ import annotations

import asyncio
import base64
import time

import orjson
import pytest

from schemas.package_content import PackageCreateContentSchema
from schemas.rules import bounded_errors, use_dictionaries
from service.domain.jobs import JobOutcome, JobStatus, new_job_id
from service.signatures import Base64JsonDecoder, encode_unsigned
from service.storage.entities import EntityStore
from service.storage.jobs import JobStore
from service.storage.mongo import StoreUnavailable
from service.usecases.processing import Delivery
from service.usecases.submissions import parse_body
from tests.conftest import OTHER_CLIENT_ID, bearer, new_job
from tests.harness import (
    ACTIVE_PATIENT,
    DEMO_CLIENT,
    entity_counts,
    example,
    package_content,
    wait_for_jobs,
)
from tests.integration.conftest import make_processor

READ = bearer(client_id=DEMO_CLIENT)
WRITE = bearer(client_id=DEMO_CLIENT, scopes=("job:read", "encounter:write"))


def with_content(content: dict) -> dict:
    submission = example("encounter_package")
    submission["data"]["signed_data"] = encode_unsigned(content)
    return submission


def many_empty_observations(body_bytes: int) -> dict:
    """The probe's body: `{"observations": [{}, {}, ...]}`, about `body_bytes` once encoded."""
    return with_content({"observations": [{}] * (body_bytes * 3 // 4 // 3)})


# --- 1. Bounded work per submission, off the event loop ---------------------------------------


async def test_a_package_of_many_empty_items_costs_one_check_and_stalls_nothing(
    db, raw_publisher, start_consumer
):
    """The probe's 1 MiB body ended after 46 s of the consumer's loop; a valid package sent
    just after waited as long. Now the array is refused by its bound before any item is read,
    and the valid package finishes as usual."""
    await start_consumer()
    hostile = many_empty_observations(1024 * 1024)
    assert len(orjson.dumps(hostile)) > 1000 * 1024
    hostile_id, valid_id = new_job_id(), new_job_id()
    await raw_publisher.publish(hostile, message_id=hostile_id)
    await raw_publisher.publish(example("encounter_package"), message_id=valid_id)

    jobs = await wait_for_jobs(db, [hostile_id, valid_id])

    assert jobs[valid_id]["status"] == JobStatus.PROCESSED
    failed = jobs[hostile_id]
    assert failed["status"] == JobStatus.FAILED and failed["status_code"] == 422
    by_entry = {entry["entry"]: entry["rules"] for entry in failed["error"]["invalid"]}
    assert by_entry["$.observations"] == [
        {
            "rule": "length",
            "params": {"max": 50},
            "description": f"expected a maximum of 50 items but got {len(hostile_items(failed))}",
        }
    ]
    assert not [entry for entry in by_entry if entry.startswith("$.observations.[")]


def hostile_items(job: dict) -> list:
    rules = {entry["entry"]: entry["rules"] for entry in job["error"]["invalid"]}
    got = int(rules["$.observations"][0]["description"].rsplit(" ", 1)[1])
    return [None] * got


def heavy_but_allowed_content() -> dict:
    """As much failing work as the bounds allow: 50 observations of 100 failing components."""
    component = {"code": 1, "value_string": 2}
    observation = {"components": [component] * 100}
    return {"encounter": {}, "observations": [observation] * 50}


def test_the_error_budget_stops_checking_items_past_what_an_error_can_show():
    content = heavy_but_allowed_content()
    schema = PackageCreateContentSchema()
    with use_dictionaries({}), bounded_errors() as budget:
        try:
            schema.load(content)
        except Exception as exc:  # the ValidationError is what is measured
            errors = exc.messages
    assert budget.spent()
    components_checked = sum(
        len(observation.get("components", {}))
        for observation in errors["observations"].values()
        if isinstance(observation, dict)
    )
    assert components_checked <= 1_000 < 50 * 100


async def test_checking_a_package_leaves_the_event_loop_free(db, patients):
    """The loop gets its turns while a package is decoded and checked: the longest pause
    between ticks of a 5 ms timer stays far below the time the check takes by itself. Each
    side is the best of a few runs, so that a pause of the machine's own (another process, a
    garbage collection) is not taken for one of ours."""
    component = {
        "code": {"coding": [{"system": "eHealth/LOINC/observation_codes", "code": "8310-5"}]},
        "value_string": "x",
    }
    content = {
        "encounter": {"id": 1},
        "observations": [{"components": [component] * 100, "id": 3} for _ in range(50)],
    }
    signed = encode_unsigned(content)
    schema = PackageCreateContentSchema()

    def check_inline() -> float:
        started = time.perf_counter()
        decoded = Base64JsonDecoder().decode(signed)
        with use_dictionaries({}), bounded_errors():
            try:
                schema.load(decoded.content)
            except Exception:  # expected: its time is what counts
                pass
        return time.perf_counter() - started

    alone = min(check_inline() for _ in range(2))
    processor = make_processor(db)
    body = orjson.dumps(with_content(content))

    async def longest_pause() -> float:
        longest, done = 0.0, asyncio.Event()

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                longest, last = max(longest, now - last), now

        ticking = asyncio.create_task(ticker())
        job = await processor.process(Delivery(new_job_id(), body))
        done.set()
        await ticking
        assert job["status"] == JobStatus.FAILED and job["status_code"] == 422
        return longest

    pauses = [await longest_pause() for _ in range(3)]

    assert alone > 0.05, "the check must take long enough for a pause to show"
    assert min(pauses) < alone / 2, (pauses, alone)


# --- 2. A message cannot end another client's job ----------------------------------------------


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2]", b"x" * (4 * 1024 * 1024 + 1)])
async def test_an_unusable_message_reusing_a_pending_job_id_is_dead_lettered(
    db, raw_publisher, start_consumer, captured_logs, body
):
    """The probe ended another client's pending job `failed 422` with a non-JSON message
    under its id. Such a message is dead-lettered; the job stays its own submission's."""
    store = JobStore(db)
    theirs = new_job(OTHER_CLIENT_ID)
    await store.create_pending(theirs)
    await start_consumer()

    await raw_publisher.publish(body, message_id=theirs.job_id)

    dead = await raw_publisher.dead_letters(expected=1)
    assert [message.message_id for message in dead] == [theirs.job_id]
    job = await db["jobs"].find_one({"_id": theirs.job_id})
    assert job["status"] == JobStatus.PENDING and job["hash"] == theirs.hash
    assert captured_logs.events("message_dead_lettered")[0]["reason"] == (
        "job id taken by another submission"
    )


async def test_an_unusable_message_of_its_own_id_still_ends_its_job_with_422(
    db, raw_publisher, start_consumer
):
    await start_consumer()
    job_id = new_job_id()
    await raw_publisher.publish(b"not json", message_id=job_id)
    jobs = await wait_for_jobs(db, [job_id])
    assert jobs[job_id]["status"] == JobStatus.FAILED and jobs[job_id]["status_code"] == 422


async def test_a_processor_that_loses_the_race_to_finish_removes_what_it_wrote(db, patients):
    """Between the writes of a package and its job's end, something else ended the job (the
    operator's give-up, the reconciler): the job stays as that ended it, with no entity."""
    jobs = JobStore(db)
    await EntityStore(db).ensure_indexes()
    finish = jobs.finish

    async def ended_meanwhile(job_id, outcome, **options):
        await finish(job_id, JobOutcome.failed_with_error("ended by someone else"))
        return await finish(job_id, outcome, **options)

    jobs.finish = ended_meanwhile  # type: ignore[method-assign]
    processor = make_processor(db)
    processor.jobs = jobs
    submission = example("encounter_package")
    job_id = new_job_id()

    job = await processor.process(Delivery(job_id, orjson.dumps(submission)))

    assert job["status"] == JobStatus.FAILED_WITH_ERROR
    assert job["error"]["message"] == "ended by someone else"
    assert set((await entity_counts(db)).values()) == {0}
    encounter_id = package_content(submission)["encounter"]["id"]
    assert await db["encounters"].find_one({"_id": encounter_id}) is None


async def test_a_redelivery_of_a_job_ended_otherwise_removes_what_is_left(db, patients):
    """A delivery wrote a package, then lost the race to finish and could not remove it
    (MongoDB failing right then): the message comes back, finds the job ended failed, and
    removes what was left."""
    await EntityStore(db).ensure_indexes()
    submission = example("encounter_package")
    job_id = new_job_id()
    body = orjson.dumps(submission)
    processor = make_processor(db)
    job = await processor.accept(Delivery(job_id, body), parse_body(body))
    entities = processor.entities
    undo = entities.undo

    async def lost_and_cannot_undo(job_id: str) -> None:
        raise StoreUnavailable("MongoDB went away")

    finish = processor.jobs.finish

    async def ended_meanwhile(job_id, outcome, **options):
        await finish(job_id, JobOutcome.failed_with_error("ended by someone else"))
        return await finish(job_id, outcome, **options)

    processor.jobs.finish = ended_meanwhile  # type: ignore[method-assign]
    entities.undo = lost_and_cannot_undo  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await processor.complete(job, parse_body(body))
    assert (await entity_counts(db))["encounters"] == 1  # left behind
    entities.undo = undo  # type: ignore[method-assign]

    redelivered = make_processor(db)
    again = await redelivered.process(Delivery(job_id, body))

    assert again["status"] == JobStatus.FAILED_WITH_ERROR
    assert set((await entity_counts(db)).values()) == {0}


async def test_a_delivery_that_loses_to_its_own_twin_keeps_the_entities(db, patients):
    """Two deliveries of one submission (a redelivery while the first still ran): the one that
    loses the race to finish keeps the entities, which are the winner's too."""
    await EntityStore(db).ensure_indexes()
    submission = example("encounter_package")
    job_id = new_job_id()
    body = orjson.dumps(submission)
    first = make_processor(db)
    processed = await first.process(Delivery(job_id, body))
    second = make_processor(db)
    parsed_job = {**processed, "status": int(JobStatus.PENDING)}  # read before the first ended
    job = await second.complete(parsed_job, parse_body(body))

    assert job["status"] == JobStatus.PROCESSED
    encounter_id = package_content(submission)["encounter"]["id"]
    assert await db["encounters"].find_one({"_id": encounter_id}) is not None


# --- 3. Deep JSON ------------------------------------------------------------------------------


def nested(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("levels", [150, 300, 1000])
async def test_deep_json_over_http_is_a_422_not_a_500(api, patients, levels):
    for method, path in [
        ("POST", f"/api/patients/{ACTIVE_PATIENT}/encounter_package"),
        ("PATCH", f"/api/patients/{ACTIVE_PATIENT}/encounter_package"),
    ]:
        response = await api.request(
            method,
            path,
            data=nested(levels),
            headers={**WRITE, "Content-Type": "application/json"},
        )
        body = await response.json()
        assert response.status == 422, body
        assert body["error"]["invalid"] == [
            {
                "entry_type": "json_data_property",
                "entry": "$",
                "rules": [
                    {
                        "rule": "length",
                        "params": {"max": 100},
                        "description": "objects and arrays are nested more than 100 levels deep",
                    }
                ],
            }
        ]


async def test_deep_json_over_amqp_ends_its_job_or_is_dead_lettered(
    db, raw_publisher, start_consumer, captured_logs
):
    """With an id, the message's own job ends 422 at once; without one, it is dead-lettered.
    Never 20 deliveries with a traceback each, then nothing."""
    await start_consumer()
    job_id = new_job_id()
    await raw_publisher.publish(nested(300), message_id=job_id)
    await raw_publisher.publish_without_message_id(nested(500))

    jobs = await wait_for_jobs(db, [job_id])
    assert jobs[job_id]["status"] == JobStatus.FAILED and jobs[job_id]["status_code"] == 422
    assert jobs[job_id]["error"]["invalid"][0]["rules"][0]["params"] == {"max": 101}
    dead = await raw_publisher.dead_letters(expected=1)
    assert [message.body for message in dead] == [nested(500)]
    assert not captured_logs.events("message_failed")


async def test_deep_signed_content_ends_422(db, raw_publisher, start_consumer):
    await start_consumer()
    job_id = new_job_id()
    submission = example("encounter_package")
    content = b'{"encounter":' + b"[" * 900 + b"]" * 900 + b"}"
    submission["data"]["signed_data"] = base64.b64encode(content).decode()
    await raw_publisher.publish(submission, message_id=job_id)
    jobs = await wait_for_jobs(db, [job_id])
    assert jobs[job_id]["status"] == JobStatus.FAILED and jobs[job_id]["status_code"] == 422


# --- 6. No reply into the service's own queues -------------------------------------------------


async def test_a_reply_to_the_services_own_queues_is_refused(
    db, settings, raw_publisher, start_consumer, captured_logs
):
    """The probe's `reply_to: medical_events.jobs` made the consumer publish a spurious job,
    and `medical_events.dead` a dead letter that replay would have turned into one."""
    await start_consumer()
    topology = raw_publisher.topology
    job_ids = [new_job_id(), new_job_id()]
    for job_id, own_queue in zip(job_ids, [topology.queue, topology.dead_queue], strict=True):
        await raw_publisher.publish(
            example("encounter_package"), message_id=job_id, reply_to=own_queue
        )

    jobs = await wait_for_jobs(db, job_ids)

    assert {job["status"] for job in jobs.values()} == {JobStatus.PROCESSED}
    await asyncio.sleep(0.5)  # a reply, had one been sent, would be a job by now
    assert await db["jobs"].count_documents({}) == 2
    dead = await raw_publisher.channel.declare_queue(topology.dead_queue, passive=True)
    assert dead.declaration_result.message_count == 0
    refused = captured_logs.events("reply_refused")
    assert sorted(event["reply_to"] for event in refused) == sorted(
        [topology.queue, topology.dead_queue]
    )


async def test_a_reply_to_the_producers_own_queue_is_sent(raw_publisher, start_consumer):
    await start_consumer()
    replies = await raw_publisher.channel.declare_queue(exclusive=True)
    job_id = new_job_id()
    await raw_publisher.publish(
        example("encounter_package"), message_id=job_id, reply_to=replies.name
    )
    reply = None
    for _ in range(100):
        reply = await replies.get(no_ack=True, fail=False)
        if reply:
            break
        await asyncio.sleep(0.1)
    assert reply is not None and orjson.loads(reply.body)["job_id"] == job_id

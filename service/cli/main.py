"""`medevents`: the one console script.

    medevents api              the HTTP API
    medevents consumer         the RabbitMQ consumer
    medevents webhooks         the webhook deliveries (docs/webhooks.md)
    medevents run              the API, the consumer and the webhooks in one process, for
                               local use (`make run`)
    medevents publish FILE     publish a submission to RabbitMQ (`--wait`: poll it to the end)
    medevents token            a development JWT for the given client and scopes (`--demo`:
                               the demo MIS's, with every scope)
    medevents patient add ID   add or update a patient (local use)
    medevents registry add NAME FILE   add registry records: employees, divisions,
                               legal_entities, dictionaries, episodes (local use)
    medevents dead-letters count|replay [--limit N]   the dead-letter queue

Configuration comes from the environment: `medevents COMMAND --help` lists the variables
COMMAND reads, with their defaults (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import structlog
from aiohttp import web
from uvloop import new_event_loop

from consumers.processors import builtin_registry
from consumers.worker import consumer_in_background, run_consumer
from service import __version__
from service.api.app import create_app, serve
from service.api.auth import mint_token, signing_secret
from service.bootstrap import Services, mongodb_configured
from service.cli.demo import (
    DEMO_CLIENT,
    DEMO_DOCTOR,
    DEMO_EPISODE,
    DEMO_PATIENTS,
    DEMO_USER,
    write_demo_records,
)
from service.cli.environment import environment_epilog
from service.cli.publish import EXIT_CODES, EXIT_USAGE, publish_submission, read_submission
from service.cli.scopes import known_scopes
from service.config import ConfigError, Settings
from service.messaging.broker import BrokerUnavailable, Topology
from service.observability.logs import configure_logging
from service.storage.registries import REGISTRIES
from service.webhooks_delivery import run_webhooks, webhooks_in_background

log = structlog.get_logger("medevents.cli")


def bootstrap(settings: Settings) -> Services:
    """What every command uses: the adapters and services of `settings`, with every job
    type of `consumers/processors/`."""
    return Services(settings, builtin_registry())


def serve_api(settings: Settings, _: argparse.Namespace) -> int:
    sockets = _listen(settings)
    if sockets is None:
        return 2
    with mongodb_configured(settings) as settings:
        _serve(create_app(bootstrap(settings)), settings, sockets)
    return 0


def serve_all(settings: Settings, _: argparse.Namespace) -> int:
    """API and consumer in one process. With the embedded MongoDB (local use), the demo
    records are written first (`service.cli.demo`) and the banner says how to submit and
    poll."""
    local = not settings.mongodb_url
    _check_signature_settings(settings)
    sockets = _listen(settings)  # before the banner: a busy port says so, and nothing else
    if sockets is None:
        return 2
    with mongodb_configured(settings) as settings:
        if local:
            asyncio.run(_write_demo(settings))
            log.info("amqp_prefix", prefix=settings.amqp_prefix, data_dir=str(settings.data_dir))
            print(banner(settings), flush=True)
        services = bootstrap(settings)
        app = create_app(services)

        async def consumer(_: web.Application) -> AsyncIterator[None]:
            async with consumer_in_background(services):
                async with webhooks_in_background(services):  # its own connection and tasks
                    yield

        app.cleanup_ctx.append(consumer)
        _serve(app, settings, sockets)
    return 0


def _check_signature_settings(settings: Settings) -> None:
    """A consumer in `cms` mode without its CA certificates stops before it starts anything
    (`ConfigError`, exit code 2)."""
    bootstrap(settings).signatures  # noqa: B018 - built for what it raises


def run_consumer_only(settings: Settings, _: argparse.Namespace) -> int:
    _check_signature_settings(settings)
    with mongodb_configured(settings) as settings:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_consumer(bootstrap(settings)))
    return 0


def run_webhooks_only(settings: Settings, _: argparse.Namespace) -> int:
    with mongodb_configured(settings) as settings:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_webhooks(bootstrap(settings)))
    return 0


def publish(settings: Settings, args: argparse.Namespace) -> int:
    submission = read_submission(args.file)
    if submission is None:
        return EXIT_USAGE
    return asyncio.run(
        publish_submission(
            bootstrap(settings),
            submission,
            wait=args.wait,
            new_ids=args.new_ids,
            api_url=args.api or f"http://127.0.0.1:{settings.http_port}",
            wait_seconds=args.timeout,
        )
    )


def dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    dead = bootstrap(settings).dead_letter_service
    try:
        if args.action == "count":
            print(asyncio.run(dead.count()))
        else:
            print(f"replayed {asyncio.run(dead.replay(limit=args.limit))}")
    except BrokerUnavailable as exc:
        print(f"medevents dead-letters: the broker is unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


def add_patient(settings: Settings, args: argparse.Namespace) -> int:
    with mongodb_configured(settings) as settings:
        asyncio.run(_put_patients(settings, {str(args.patient_id): args.status}))
    print(f"patient {args.patient_id} {args.status}")
    return 0


async def _put_patients(settings: Settings, patients: dict[str, str]) -> None:
    async with bootstrap(settings) as services:
        for patient_id, status in patients.items():
            await services.patients.put(patient_id, status)


async def _write_demo(settings: Settings) -> None:
    async with bootstrap(settings) as services:
        await write_demo_records(services.patients, services.registries, services.entities)


# The registries, and the episodes until they are submitted as jobs.
REGISTRY_NAMES = (*REGISTRIES, "episodes")


def add_records(settings: Settings, args: argparse.Namespace) -> int:
    """Records of another registry (or episodes, until they are submitted as jobs), from a
    JSON object or a list of them, each with its `_id`."""
    try:
        records = orjson.loads(args.file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"medevents registry add: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    records = records if isinstance(records, list) else [records]
    if not all(isinstance(r, dict) and isinstance(r.get("_id"), str) for r in records):
        print("medevents registry add: each record is an object with an _id", file=sys.stderr)
        return 2
    with mongodb_configured(settings) as settings:
        asyncio.run(_put_records(settings, args.name, records))
    print(f"{len(records)} {args.name} written")
    return 0


async def _put_records(settings: Settings, name: str, records: list[dict]) -> None:
    async with bootstrap(settings) as services:
        for record in records:
            if name == "episodes":
                await services.entities.put_episode(record)
            else:
                await services.registries.put(name, record)


# The examples are files of the source tree, not of the wheel: an editable install (`make run`)
# finds them beside the packages; an installed wheel says where to get them.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES_ELSEWHERE = (
    "the examples are not installed with the package: they are in the examples/ directory "
    "of the source repository (medevents publish FILE --wait)"
)


def examples_hint(examples: Path = EXAMPLES) -> str:
    """The banner's line that submits the first example, or says where the examples are."""
    example = examples / "encounter_package.json"
    if not example.is_file():
        return EXAMPLES_ELSEWHERE
    return f"{medevents_command()} publish {_shown(example)} --wait"


def medevents_command() -> str:
    """This virtualenv's `medevents`, as the banner shows it (`.venv/bin/medevents` in a
    checkout)."""
    return _shown(Path(sys.executable).parent / "medevents")


def _shown(path: Path) -> str:
    """`path` relative to the working directory when inside it, else absolute."""
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def banner(settings: Settings) -> str:
    api = f"http://{settings.http_host}:{settings.http_port}"
    return f"""
medevents {__version__}: API on {api}, consumer on {settings.amqp_url.rsplit("@", 1)[-1]}
  queue:   {Topology(settings.amqp_prefix).queue} (AMQP_PREFIX={settings.amqp_prefix})
  submit:  {examples_hint()}
  token:   TOKEN=$({medevents_command()} token --demo)   # the demo MIS, every scope
  poll:    curl -s -H "Authorization: Bearer $TOKEN" "{api}/api/jobs/JOB_ID?wait=30"
  operate: {api}/dashboard with that token (it holds jobs:admin)
  demo patients: {", ".join(f"{p} ({s})" for p, s in DEMO_PATIENTS.items())}
  demo MIS: legal entity {DEMO_CLIENT}, doctor {DEMO_DOCTOR}, episode {DEMO_EPISODE}
"""


def _listen(settings: Settings) -> list[socket.socket] | None:
    """The API's listening sockets, bound at once (every address `HTTP_HOST` names, as
    aiohttp would bind them); None, with one line on standard error, when the port cannot be
    had (in use, or not ours to take)."""
    host, port = settings.http_host, settings.http_port
    sockets: list[socket.socket] = []
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
        if isinstance(exc, socket.gaierror):
            why = f"cannot be bound: no such address ({exc})"
        print(
            f"medevents: port {port} on {host} {why} (HTTP_HOST, HTTP_PORT)",
            file=sys.stderr,
            flush=True,
        )
        return None
    return sockets


def _serve(app: web.Application, settings: Settings, sockets: list[socket.socket]) -> None:
    """`service.api.app.serve` on a uvloop loop, as `web.run_app` runs its app: SIGINT or
    SIGTERM (`web.GracefulExit`) cancels it, which stops listening, lets requests in progress
    finish and runs the app's cleanup; then the tasks left are cancelled and the loop closed."""
    port = sockets[0].getsockname()[1]
    log.info("http_serving", url=f"http://{settings.http_host}:{port}")
    loop = new_event_loop()
    main_task = loop.create_task(serve(app, settings, sockets))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main_task.done():  # done: it failed at startup, and that is raised
                main_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


def print_token(settings: Settings, args: argparse.Namespace) -> int:
    scopes = [scope for value in args.scope for scope in value.split()]
    client_id, user_id = args.client_id, args.user_id
    if args.demo:
        client_id, user_id = DEMO_CLIENT, user_id or DEMO_USER
        scopes = list(dict.fromkeys([*known_scopes(builtin_registry()), *scopes]))
    if args.private_key:
        key: str | bytes = args.private_key.read_bytes()
        algorithm = args.algorithm
    else:
        if settings.jwt_public_key:
            print(
                "medevents token: JWT_PUBLIC_KEY is set; sign with --private-key", file=sys.stderr
            )
            return 2
        key, algorithm = signing_secret(settings), "HS256"
    user_id = user_id or str(uuid.uuid4())
    token = mint_token(
        key,
        client_id,
        scopes,
        user_id,
        args.expires_in,
        algorithm,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    print(token)
    return 0


PUBLISH_DESCRIPTION = """\
Publish a submission straight to RabbitMQ, as a producer does, with a new job id;
print the id and the job's URL. --wait polls the job until it ends (long polls,
with a token for the submission's client) and prints the final response."""


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {said}" for code, said in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medevents",
        description=__doc__.split("\n\n")[0],
        epilog="Configuration comes from the environment: `medevents COMMAND --help` lists the\n"
        "variables COMMAND reads, with their defaults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medevents {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, summary: str, description: str = "", epilog: str = ""
    ) -> argparse.ArgumentParser:
        """A subcommand whose help ends with the environment variables it reads."""
        return commands.add_parser(
            name,
            help=summary,
            description=description or summary[0].upper() + summary[1:] + ".",
            epilog="\n\n".join(filter(None, [epilog, environment_epilog(name)])),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command("api", "serve the HTTP API").set_defaults(func=serve_api)
    command("consumer", "run the RabbitMQ consumer").set_defaults(func=run_consumer_only)
    command("webhooks", "deliver the clients' webhooks").set_defaults(func=run_webhooks_only)
    command(
        "run",
        "the API, the consumer and the webhooks in one process (local use)",
        "The API, the consumer and the webhooks in one process, for local use\n"
        "(`make run`). With MONGODB_URL unset: an embedded MongoDB under DATA_DIR, the\n"
        "demo records written, and a banner that says how to submit and poll.",
    ).set_defaults(func=serve_all)

    producer = command(
        "publish", "publish a submission to RabbitMQ", PUBLISH_DESCRIPTION, _exit_codes()
    )
    producer.add_argument("file", type=Path, help="a JSON submission (see examples/)")
    producer.add_argument("--wait", action="store_true", help="poll the job until it ends")
    producer.add_argument(
        "--new-ids", action="store_true", help="give every entity a new UUID first"
    )
    producer.add_argument("--api", help="the API to poll (default: http://127.0.0.1:HTTP_PORT)")
    producer.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait (default: 60)"
    )
    producer.set_defaults(func=publish)

    dead = command("dead-letters", "count or replay the dead-letter queue")
    dead.add_argument("action", choices=["count", "replay"])
    dead.add_argument("--limit", type=int, help="replay at most this many (oldest first)")
    dead.set_defaults(func=dead_letters)

    patient = command("patient", "patients (local use)")
    patient_commands = patient.add_subparsers(dest="patient_command", required=True)
    patient_add = patient_commands.add_parser("add", help="add or update a patient")
    patient_add.add_argument("patient_id", type=uuid.UUID)
    patient_add.add_argument("--status", choices=["active", "inactive"], default="active")
    patient_add.set_defaults(func=add_patient)

    registry = command("registry", "records of other registries (local use)")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    registry_add = registry_commands.add_parser("add", help="add or replace records")
    registry_add.add_argument("name", choices=REGISTRY_NAMES)
    registry_add.add_argument("file", type=Path, help="a JSON object or a list of them")
    registry_add.set_defaults(func=add_records)

    token = command(
        "token",
        "print a development JWT",
        "Print a JWT signed with JWT_SECRET (or the local secret under DATA_DIR), or\n"
        "with --private-key. --demo: the demo MIS's token (its client id, the user\n"
        "demo-doctor) with every scope the service checks: enough for the README's\n"
        "walkthrough and for the dashboard.",
    )
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--client-id", help="the client (MIS) the token is for")
    who.add_argument(
        "--demo",
        action="store_true",
        help=f"client {DEMO_CLIENT}, user {DEMO_USER}, every scope the service checks",
    )
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help='scopes, space separated or repeated: --scope "job:read encounter:write"',
    )
    token.add_argument(
        "--user-id", help=f"the `sub` claim (default: a new UUID; with --demo: {DEMO_USER})"
    )
    token.add_argument("--expires-in", type=int, default=3600, help="seconds (default 3600)")
    token.add_argument("--private-key", type=Path, help="PEM private key for RS256/ES256")
    token.add_argument("--algorithm", choices=["RS256", "ES256"], default="RS256")
    token.set_defaults(func=print_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"medevents: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_format, settings.log_level)
    try:
        return args.func(settings, args)
    except ConfigError as exc:
        print(f"medevents: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

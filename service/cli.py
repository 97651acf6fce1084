"""`medevents`: the one console script.

    medevents api      the HTTP API
    medevents run      everything in one process, for local use (`make run`)
    medevents token    a development JWT for the given client and scopes

Configuration comes from the environment (README, "Configuration").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import structlog
from aiohttp import web

from service.app import create_app
from service.auth import mint_token, signing_secret
from service.config import ConfigError, Settings
from service.embedded_mongo import EmbeddedMongo
from service.logs import configure_logging

log = structlog.get_logger("medevents.cli")


@contextlib.contextmanager
def mongodb_for(settings: Settings) -> Iterator[Settings]:
    """The settings with a MongoDB URL: the configured one, or the embedded server's."""
    if settings.mongodb_url:
        yield settings
        return
    with EmbeddedMongo(settings.data_dir) as url:
        yield settings.with_changes(mongodb_url=url)


def serve_api(settings: Settings, _: argparse.Namespace) -> int:
    with mongodb_for(settings) as settings:
        app = create_app(settings)
        log.info("http_serving", url=f"http://{settings.http_host}:{settings.http_port}")
        web.run_app(
            app,
            host=settings.http_host,
            port=settings.http_port,
            access_log=None,  # the request_context middleware logs each request
            print=None,
            handle_signals=True,
        )
    return 0


def print_token(settings: Settings, args: argparse.Namespace) -> int:
    scopes = [scope for value in args.scope for scope in value.split()]
    if args.private_key:
        key: object = args.private_key.read_bytes()
        algorithm = args.algorithm
    else:
        if settings.jwt_public_key:
            print(
                "medevents token: JWT_PUBLIC_KEY is set; sign with --private-key", file=sys.stderr
            )
            return 2
        key, algorithm = signing_secret(settings), "HS256"
    token = mint_token(key, args.client_id, scopes, args.user_id, args.expires_in, algorithm)
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medevents", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API")
    api.set_defaults(func=serve_api)
    # The consumer joins `run` when it exists; until then `run` serves the API.
    run = commands.add_parser("run", help="the API and the consumer in one process (local use)")
    run.set_defaults(func=serve_api)

    token = commands.add_parser("token", help="print a development JWT")
    token.add_argument("--client-id", required=True, help="the client (MIS) the token is for")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help='scopes, space separated or repeated: --scope "job:read encounter:write"',
    )
    token.add_argument("--user-id", default=str(uuid.uuid4()), help="the `sub` claim")
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
        return 2
    configure_logging(settings.log_format, settings.log_level)
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())

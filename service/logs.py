"""structlog set-up: one event per line, JSON in production, console in development.

Everything goes through the standard library's root handler, so that the lines of aiohttp,
PyMongo and aio-pika come out in the same format and carry the same context variables
(`request_id` above all) as the project's own events.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
import structlog


def _json_dumps(event: dict, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is replaced by the `request_finished` event of our middleware.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The driver's own command monitoring is far too chatty at INFO.
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, root.level))
    # At DEBUG the AMQP client logs every frame, message bodies included: package contents
    # must not reach the logs, whatever LOG_LEVEL says.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

"""structlog set-up: one event per line, JSON in production, console in development.

The project's own events are rendered by structlog and written straight to the stream: the
standard library's logging machinery cost more than the rest of a poll's logging
(docs/benchmarks.md, "Polling"). The lines of aiohttp, PyMongo and aio-pika go through the
standard library's root handler, rendered by the same processors, so they come out in the
same format and carry the same context variables (`request_id` above all).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import ClassVar, TextIO

import orjson
import structlog


def _json_dumps(event: dict, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


class _Output:
    """Where, from which level and through which processors the project's events are
    written. Loggers are cached on first use, so they read these at each event (the list of
    processors is changed in place): a later `configure_logging` applies to them too."""

    stream: TextIO = sys.stderr
    # A line-buffered stream (stderr) flushes each line as it is written.
    flushes_lines: bool = False
    level: int = logging.INFO
    processors: ClassVar[list[structlog.types.Processor]] = []


class EventLogger:
    """structlog's output for the project's events: one rendered line per event."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name  # for `add_logger_name`

    def msg(self, message: str) -> None:
        stream = _Output.stream
        try:
            stream.write(message + "\n")
            if not _Output.flushes_lines:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as logging's handlers do,
            pass  # never fail the caller over its log line

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class UtcTimestamp:
    """`structlog.processors.TimeStamper(fmt="iso", utc=True)`, the same text
    (`2026-01-02T03:04:05.123456Z`; no fraction at a whole second, as `isoformat` writes it)
    for a fifth of its cost, a tenth of a request's logging: the date and time to the second
    are formatted once a second."""

    # One attribute, read and written once: loggers in other threads (the CPU pool, the probe
    # server) never see one second's prefix paired with another second.
    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(
        self, _: structlog.typing.WrappedLogger, __: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        micro = int((now - second) * 1_000_000)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else prefix + "Z"
        return event_dict


def _drop_below_level(
    _: structlog.typing.WrappedLogger, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    if _LEVELS.get(method_name, logging.INFO) < _Output.level:
        raise structlog.DropEvent
    return event_dict


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


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
        UtcTimestamp(),
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

    _Output.stream = stream
    _Output.flushes_lines = getattr(stream, "line_buffering", False) is True
    _Output.level = root.level
    _Output.processors[:] = [
        _drop_below_level,
        *shared,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_Output.processors,
        logger_factory=EventLogger,
        # Filtering is `_drop_below_level`'s, so that the level can change after first use.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )

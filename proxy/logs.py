"""structlog set-up: JSON lines by default (the journal, log shippers), console on a TTY.

Libraries log through the standard ``logging`` module, and their records can quote a client's
bytes: aiohttp's parser errors carry the raw header or request line, asyncio's callback reports
the arguments of the call. ``LibraryRecords`` turns every such record into one structlog event
that keeps only fixed text: the logger, the message up to its first variable part, the client
address, and the error's class with a safe reason (``proxy.redact``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any, TextIO, cast

import structlog
from aiohttp import http_exceptions

from proxy.redact import client_address, describe_chain, frames

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MESSAGE_DATA = re.compile(r"[\n<(\[{'\"=%`\\]")
"""Where a library message stops being fixed text: a placeholder, a repr, a quote."""


def library_event(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and fields a library's log record becomes; nothing a client sent is in it.

    A request aiohttp could not parse is ``bad_request`` (its reason, the client address); any
    other record is ``library_log``, with the frames of its exception when it has one.
    """
    exc = record.exc_info[1] if record.exc_info else None
    fields: dict[str, Any] = {"logger": record.name}
    message = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    fields["message"] = MESSAGE_DATA.split(message, maxsplit=1)[0].strip(" :,.")
    if isinstance(record.args, tuple):
        client = next((a for a in map(client_address, record.args) if a is not None), None)
        if client is not None:
            fields["client"] = client
    if exc is None:
        return "library_log", fields
    fields["error"] = describe_chain(exc)
    if isinstance(exc, http_exceptions.HttpProcessingError):
        fields["status"] = exc.code
        return "bad_request", fields
    fields["frames"] = frames(exc)
    return "library_log", fields


class LibraryRecords(logging.Handler):
    """Sends every standard-library log record to structlog as ``library_event`` describes it."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._log = structlog.get_logger("ollama_governor.library")

    def emit(self, record: logging.LogRecord) -> None:
        """Log the record's safe form; a record that cannot be described is dropped, never raised."""
        try:
            event, fields = library_event(record)
            # A client's malformed request is its own mistake, not the service's: a warning.
            level = min(record.levelno, logging.WARNING) if event == "bad_request" else record.levelno
            self._log.log(level, event, **fields)
        except Exception:  # a log handler must never break the code that logged
            self.handleError(record)


class DroppingStream:
    """The log stream, minus its failures: a line that cannot be written (a full disk, a pipe
    whose reader went away) is counted and dropped, never raised into the request that logged."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = 0
        """Lines lost since start."""

    def write(self, text: str) -> int:
        """Write ``text``, or drop it."""
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.dropped += 1
            return 0

    def flush(self) -> None:
        """Flush, or give up quietly."""
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        """Whether the underlying stream is a terminal."""
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None, *, cache: bool = True
) -> None:
    """Route every ``structlog`` event to ``stream`` (stdout) as JSON or console text.

    With ``cache`` (serve, once per process) each logger binds its configuration on first use,
    which saves that work on every request; pass ``cache=False`` to reconfigure later. Standard
    ``logging`` records (aiohttp, asyncio) go through ``LibraryRecords`` into the same stream, and
    a stream that cannot be written drops lines rather than failing requests (``DroppingStream``).
    """
    out = DroppingStream(stream or sys.stdout)
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if not console else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=cache,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryRecords)]:
        root.removeHandler(handler)
    root.addHandler(LibraryRecords())
    root.setLevel(min(root.level or logging.WARNING, logging.WARNING))
    logging.raiseExceptions = False  # a failing handler must not print the record to stderr

"""structlog set-up: JSON lines by default (the journal, log shippers), console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None, *, cache: bool = True
) -> None:
    """Route every ``structlog`` event to ``stream`` (stdout) as JSON or console text.

    With ``cache`` (serve, once per process) each logger binds its configuration on first use,
    which saves that work on every request; pass ``cache=False`` to reconfigure later.
    """
    out = stream or sys.stdout
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
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
    # aiohttp reports handler crashes through stdlib logging; keep them in the same stream.
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s")

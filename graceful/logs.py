"""Structured logs: graceful only asks for a logger; configuring output is opt-in.

``configure_logging()`` is what ``graceful.run`` calls unless structlog is already configured
or ``log_format="off"``: pretty lines on a TTY, one JSON object per line otherwise (what
container log collectors parse).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def get_logger(**initial: Any) -> Any:
    """graceful's logger (``structlog.get_logger("graceful")``).

    .. versionadded:: 0.1
    """
    return structlog.get_logger("graceful", **initial)


def configure_logging(*, format: str = "auto", level: str = "info") -> None:
    """Configure structlog for a service: JSON when not on a TTY, pretty on one.

    Args:
        format: ``"auto"``, ``"json"`` or ``"console"``.
        level: minimum level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.

    .. versionadded:: 0.1
    """
    if format == "auto":
        format = "console" if sys.stdout.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if format == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.EventRenamer("event"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )

"""Structured logs: graceful only asks for a logger; configuring output is opt-in.

``configure_logging()`` is what ``graceful.run`` calls unless structlog is already configured
or ``log_format="off"``: pretty lines on a TTY, one JSON object per line otherwise (what
container log collectors parse).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger", "last_line"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def get_logger(*, level: str | None = None, **initial: Any) -> Any:
    """graceful's logger (``structlog.get_logger("graceful")``).

    Args:
        level: drop events below this level whatever structlog's configuration says; for an
            application that left structlog unconfigured (whose default prints every level).
        initial: values bound to every event.

    .. versionadded:: 0.1
    """
    if level is None:
        return structlog.get_logger("graceful", **initial)
    return structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory_args=("graceful",),
        **initial,
    )


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


def last_line(event: str, *, level: str = "error", **fields: Any) -> None:
    """Write one JSON log line straight to stdout's file descriptor, for a process about to die.

    Used where the normal logging path cannot be trusted: in a signal handler (the main thread
    may be inside a write to stdout) and in the deadline watchdog (the main thread may be blocked
    holding stdout's lock). Buffered output is flushed first, from a helper thread given a few
    milliseconds, so the lines before this one are not lost and a held lock cannot hang us.
    On the main thread (a signal handler) the flush is direct: a reentrant flush raises there
    instead of blocking.

    .. versionadded:: 0.1
    """
    if threading.current_thread() is threading.main_thread():
        _flush_stdio()
    else:
        flusher = threading.Thread(target=_flush_stdio, name="graceful-flush", daemon=True)
        flusher.start()
        flusher.join(0.05)
    record = {
        "event": event,
        "level": level,
        "logger": "graceful",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    }
    line = json.dumps(record, default=str) + "\n"
    try:
        os.write(sys.stdout.fileno(), line.encode())
    except Exception:  # stdout closed or not a file: nothing more can be said
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a reentrant flush (from a signal handler) may fail; go on
            pass

"""Structured logs: graceful only asks for a logger; configuring output is opt-in.

``configure_logging()`` is what ``graceful.run`` calls unless structlog is already configured
or ``log_format="off"``: pretty lines on a TTY, one JSON object per line otherwise (what
container log collectors parse). Unless the application has configured ``logging`` itself,
the standard library's records (uvicorn's, aiohttp's, the app's own ``logging`` calls, Python
warnings) are rendered by the same structlog processors, so every line of the container's log
is one JSON object. The access line takes a shorter way to the same handler when nothing
else would see it (``graceful.integrations._access``): :meth:`StdlibHandler.write_line`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = [
    "LossyStream",
    "StdlibHandler",
    "configure_logging",
    "exception_dicts",
    "get_logger",
    "last_line",
    "lossy_output",
    "writes_json",
]

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


#: An exception as graceful's JSON lines carry it (``"exception"``): its chain, each with its
#: frames, without the frames' local variables (a log line must not carry request data or
#: credentials that happened to be in scope).
_EXCEPTION_DICT = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)


def writes_json(format: str) -> bool:
    """Whether :func:`configure_logging` with this ``format`` writes JSON lines: ``"json"``,
    or ``"auto"`` when stdout is not a terminal.

    .. versionadded:: 0.1
    """
    return format == "json" or (format == "auto" and not sys.stdout.isatty())


def exception_dicts(exc: BaseException) -> list[dict[str, Any]]:
    """``exc`` and its traceback as graceful's JSON error lines carry them (``"exception"``).

    .. versionadded:: 0.1
    """
    found: list[dict[str, Any]] = _EXCEPTION_DICT((type(exc), exc, exc.__traceback__))
    return found


def configure_logging(*, format: str = "auto", level: str = "info", stdlib: bool = True) -> None:
    """Configure structlog for a service: JSON when not on a TTY, pretty on one.

    Args:
        format: ``"auto"``, ``"json"`` or ``"console"``.
        level: minimum level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
        stdlib: also render the standard library's log records (and warnings) with the same
            processors, through a :class:`StdlibHandler` on the root logger at ``level``;
            skipped when the root logger already has a handler of the application's.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       ``stdlib``: the standard library's records as structlog events.
    """
    if format == "auto":
        format = "json" if writes_json(format) else "console"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if format == "json":
        render: list[Any] = [
            structlog.processors.ExceptionRenderer(_EXCEPTION_DICT),  # without locals
            structlog.processors.EventRenamer("event"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        render = [structlog.dev.ConsoleRenderer()]
    structlog.configure(
        processors=shared + render,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    if stdlib:
        _route_stdlib(shared, render, _LEVELS[level], json_lines=format == "json")


class StdlibHandler(logging.Handler):
    """Writes standard library records, rendered by structlog, to stdout.

    Lines go through a ``structlog.PrintLogger`` on the same stream as graceful's own events,
    so both share one lock and a line is never split by another thread's.

    Args:
        formatter: renders a record as one line.
        stream: where to write (``sys.stdout`` by default).
        json_lines: the formatter writes JSON objects: a line built elsewhere in that shape
            (the access line's fast path) may be handed to :meth:`write_line`.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       ``json_lines`` and :meth:`write_line`.
    """

    def __init__(
        self, formatter: logging.Formatter, stream: Any = None, *, json_lines: bool = False
    ) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.json_lines = json_lines
        self._printer = structlog.PrintLogger(sys.stdout if stream is None else stream)

    def emit(self, record: logging.LogRecord) -> None:
        """Render ``record`` as one line and print it."""
        try:
            self._printer.msg(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Print one line already rendered (no record, no formatter); never raises."""
        try:
            self._printer.msg(line)
        except Exception:  # a log line is not worth the request that wrote it
            pass


def _route_stdlib(shared: list[Any], render: list[Any], level: int, *, json_lines: bool) -> None:
    root = logging.getLogger()
    if any(not isinstance(handler, StdlibHandler) for handler in root.handlers):
        return  # the application configured logging: its handlers, its format
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    for handler in list(root.handlers):  # configured again: replace ours
        root.removeHandler(handler)
    root.addHandler(StdlibHandler(formatter, json_lines=json_lines))
    root.setLevel(level)
    logging.captureWarnings(True)


def _drop_color_message(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn passes its message again with ANSI colours as an extra; the JSON needs it once.
    event.pop("color_message", None)
    return event


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
    # The same shape as the JSON lines configure_logging writes (ISO time in UTC, to the µs).
    stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    record = {**fields, "level": level, "timestamp": stamp, "event": event}
    line = json.dumps(record, default=str) + "\n"
    if getattr(sys.stdout, "line_open", False):
        # A signal handler ran between a line's text and its newline (``print`` writes them
        # apart when stdout writes through): ours would end that line and be unreadable.
        line = "\n" + line
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


def lossy_output() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`LossyStream` (once): from then on no
    write to them raises, so no log line can end a stop. ``graceful.run`` and ``graceful
    serve`` do it before they log anything.

    .. versionadded:: 0.1
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, LossyStream):
            setattr(sys, name, LossyStream(stream))


class LossyStream:
    """A text stream whose writes never raise: a line that cannot be written is lost.

    When the reader of stdout is gone (a log collector restarted, ``| head``), every write
    raises ``BrokenPipeError``. Raised from a log call, that ended the stop in the signal
    callback that logs ``signal.received``: the stop never began and the watchdog ended the
    container at its deadline with exit 6. Once the pipe is broken (or the terminal
    hung up) the descriptor is pointed at ``/dev/null``, so that later lines and the
    interpreter's last flush at exit (which would otherwise make the exit status 120) go
    nowhere. Any other error (a full disk) loses that line only.

    Args:
        stream: the stream to write to.

    .. versionadded:: 0.1
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        #: The last text written did not end its line (``print`` writes the newline apart):
        #: a line written past this stream (``last_line``) must start a new one.
        self.line_open = False

    def write(self, text: str) -> int:
        if text:
            self.line_open = text[-1] != "\n"
        try:
            return int(self.stream.write(text))
        except OSError as exc:
            self._lost(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            self._lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def _lost(self, exc: OSError) -> None:
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
                self.stream.flush()  # what was buffered goes to /dev/null now

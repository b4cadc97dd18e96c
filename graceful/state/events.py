"""Where the store's log events go: structlog once something configured it, the standard
library's ``graceful.state`` logger until then.

A store is a library: a script or a test that opens one outside ``graceful.run`` and has not
set up logging must not get lines on its stdout in structlog's default console format. So the
choice is made at each event, the way ``graceful.logs`` decides whether to configure: when
structlog is configured (by ``graceful.run``, which configures it unless the application did,
or by the application) the event goes to structlog as before; otherwise it is a plain
``logging`` record, which prints nothing below WARNING and, without a handler, its warnings
and errors as one unformatted line on stderr (Python's last-resort handler). An application
that configured ``logging`` gets the events through its own handlers, at its own level.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import structlog

from graceful.logs import get_logger

__all__ = ["STDLIB_LOGGER", "StateLog"]

#: The standard library logger the events go to while structlog is not configured.
STDLIB_LOGGER: Final = "graceful.state"


class StateLog:
    """A logger with ``info``, ``warning`` and ``error``, routed per event (see the module)."""

    def __init__(self) -> None:
        self._stdlib = logging.getLogger(STDLIB_LOGGER)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self._emit(logging.ERROR, "error", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(get_logger(), method)(event, **fields)
        elif self._stdlib.isEnabledFor(level):
            # The event name first, then key=value: readable as it is, and the fields stay
            # available to a handler that wants them (``record.graceful``).
            text = " ".join([event, *(f"{key}={value!r}" for key, value in fields.items())])
            self._stdlib.log(level, "%s", text, extra={"graceful": {"event": event, **fields}})

"""The ``graceful`` command's first step: catch stop signals before anything is imported.

As a container's PID 1 a signal that finds no handler is dropped, and ``docker stop`` then
waits for SIGKILL. Importing the command (asyncio, structlog, prometheus-client, uvicorn)
takes 0.2-0.3 s on a small machine, and until the old entry point had imported all of it no
handler was installed: a SIGTERM in that window was lost. These handlers only record the
signal; once the command has installed its own (the startup guard, the supervisor's, the
runtime's), :func:`hand_over` raises each recorded signal again for them.

This module imports nothing but :mod:`signal`: ``graceful/__init__.py`` is lazy, so importing
it costs no more than the interpreter's own start.
"""

import signal

__all__ = ["hand_over", "install"]

#: The signals ``docker stop`` and Ctrl-C send (GRACEFUL_SIGNALS is not read yet here).
CAUGHT = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []
_previous: dict[int, object] = {}


def _record(signum: int, _frame: object) -> None:
    _received.append(signum)


def install() -> None:
    """Record the stop signals from now on (main thread, before any other import)."""
    for sig in CAUGHT:
        _previous.setdefault(sig, signal.signal(sig, _record))


def hand_over() -> None:
    """Give the signals back: restore the handlers there were before :func:`install` where
    nobody has replaced ours since, then raise each recorded signal again, in order, for
    whoever handles it now. Call it right after installing the command's own handlers."""
    for sig, previous in _previous.items():
        if signal.getsignal(sig) is _record:
            signal.signal(sig, previous)  # type: ignore[arg-type]
    _previous.clear()
    pending = list(_received)
    _received.clear()
    for signum in pending:
        signal.raise_signal(signum)

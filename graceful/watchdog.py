"""The deadline watchdog: the process ends at the exit deadline, whatever the loop is doing.

Every phase of a stop is bounded by deadlines that the event loop enforces, which is worth
nothing once the loop is blocked: a ``time.sleep`` in a hook, a synchronous client in a request
handler, an async generator whose ``finally`` awaits forever during interpreter teardown. Under
``docker stop`` each of those ends as SIGKILL (exit 137), after a report that may have claimed a
clean exit. The watchdog is a thread armed at the first stop signal: at ``exit_at`` plus a hair
it writes one ``shutdown.overran`` line naming what was still running (phase, hook, the main
thread's stack) and ends the process with ``ExitCode.OVERRAN``, still inside the margin left
before SIGKILL.

A thread needs the GIL to run, and a C extension can hold it while blocked (a catastrophic
regular expression, say). As a backstop that needs no GIL, ``faulthandler`` is armed a second
hair later: it dumps every thread's stack to stderr and exits with status 1.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from graceful.logs import last_line

__all__ = ["Watchdog", "grace_for"]


def grace_for(margin: float) -> float:
    """The watchdog's hair after ``exit_at``: a quarter of the margin (at most 0.25 s), so
    that it and, a second hair later, the ``faulthandler`` backstop both come before SIGKILL.

    .. versionadded:: 0.1
    """
    return min(margin / 4, 0.25)


class Watchdog:
    """Ends the process at a monotonic deadline unless disarmed first.

    Args:
        exit_code: the process's exit status when the watchdog fires.
        describe: called on the watchdog thread when it fires; returns what the service was
            doing (phase, hook, ...) for the ``shutdown.overran`` line. Must not block.
        grace: the hair after the deadline, and again before the ``faulthandler`` backstop.

    .. versionadded:: 0.1
    """

    def __init__(
        self, *, exit_code: int, describe: Callable[[], dict[str, Any]], grace: float
    ) -> None:
        self._exit_code = exit_code
        self._describe = describe
        self._grace = grace
        self._deadline: float | None = None
        self._wake = threading.Event()
        self._done = False
        self._backstop = False
        self._thread = threading.Thread(target=self._watch, name="graceful-watchdog", daemon=True)

    def start(self) -> None:
        """Start the (idle) watchdog thread; arming it later is then safe from a signal handler."""
        self._thread.start()

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline`` (``time.monotonic()`` clock) plus the grace; the earliest wins.

        Safe to call from a signal handler: it only stores a number and sets an event.
        """
        if self._done:
            return
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
            self._wake.set()

    @property
    def deadline(self) -> float | None:
        """The monotonic time the watchdog fires at, once armed."""
        return None if self._deadline is None else self._deadline + self._grace

    def arm_backstop(self) -> None:
        """Arm the ``faulthandler`` backstop for the deadline (never from a signal handler)."""
        fires_at = self.deadline
        if fires_at is None or self._done:
            return
        try:
            faulthandler.dump_traceback_later(
                max(fires_at + self._grace - time.monotonic(), 0.001), exit=True, file=sys.stderr
            )
        except (ValueError, OSError, AttributeError):  # stderr replaced by a non-file
            return
        except RuntimeError:
            # No thread can be started (the pids limit): the stop goes on without the
            # backstop; the watchdog's own thread, started at startup, still guards it.
            return
        self._backstop = True

    def disarm(self) -> None:
        """Stop watching: the process finished its stop in time."""
        self._done = True
        self._wake.set()
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
            self._backstop = False

    def _watch(self) -> None:
        while not self._done:
            fires_at = self.deadline
            if fires_at is None:
                self._wake.wait()
            else:
                self._wake.wait(max(fires_at - time.monotonic(), 0.0))
            self._wake.clear()
            if self._is_due():
                self._fire(self._deadline or 0.0)

    def _is_due(self) -> bool:
        fires_at = self.deadline
        return not self._done and fires_at is not None and time.monotonic() >= fires_at

    def _fire(self, fires_at: float) -> None:
        try:
            doing = self._describe()
        except Exception as exc:  # never let a description stop the exit
            doing = {"describe_error": repr(exc)}
        last_line(
            "shutdown.overran",
            exit_code=self._exit_code,
            late_s=round(time.monotonic() - fires_at, 3),
            main_thread_stack=main_thread_stack(),
            action="the stop ran past its exit deadline; the process ends now, before SIGKILL",
            **doing,
        )
        os._exit(self._exit_code)


def main_thread_stack(limit: int = 12) -> list[str]:
    """The innermost frames of the main thread, one ``file:line in function`` string each."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return []
    return [
        f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
        for f in traceback.extract_stack(frame)[-limit:]
    ]

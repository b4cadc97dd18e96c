"""Test targets that send SIGTERM to their own process just after their import is over.

The signal comes when graceful reads the target's signature (to tell what kind of app it
is), which happens after the module's import: in the window between the import guard and
the runtime's own handlers. A handler must be there: without one the process dies of the
signal (exit -15), or, as PID 1, the signal is dropped and the service runs until SIGKILL.

- ``app``: an ASGI app (``graceful serve``).
- ``main``: an ``async def main(runtime)`` (``graceful run``).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from typing import Any


class SignalWhenInspected:
    """A callable whose ``__signature__``, read once, sends SIGTERM to this process."""

    def __init__(self, *parameters: str) -> None:
        self._signature = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in parameters]
        )
        self._sent = False

    @property
    def __signature__(self) -> inspect.Signature:
        if not self._sent:
            self._sent = True
            print("sending SIGTERM after the import", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return self._signature

    async def __call__(self, *args: Any) -> None:
        print("main ran", file=sys.stderr, flush=True)


app = SignalWhenInspected("scope", "receive", "send")
main = SignalWhenInspected("runtime")

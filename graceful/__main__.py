"""The ``graceful`` command: ``python -m graceful`` and the console script (``main``)."""

import os
import signal
import sys

from graceful.signals import StartupSignals


def main() -> int:
    """Catch the stop signals first (:meth:`StartupSignals.capture`), then import and run the
    command. ``graceful/__init__.py`` is lazy and :mod:`graceful.signals` imports nothing heavy,
    so the handlers are in before asyncio, structlog or the app is loaded."""
    StartupSignals.capture()
    from graceful.cli import main as cli_main

    try:
        code = cli_main(sys.argv[1:])
    except BrokenPipeError:
        # `graceful config | head`: the reader left. No traceback, and none at exit either
        # when the interpreter flushes stdout (the recipe of Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C where graceful does not stop on SIGINT: no traceback
        return 130
    # The command is over and its exit code is decided: a late stop signal (a storm, a second
    # docker stop) must not turn it into death by signal.
    for name in ("SIGTERM", "SIGINT"):
        signal.signal(signal.Signals[name], signal.SIG_IGN)
    from graceful.runner import end_if_threads_hold

    end_if_threads_hold(code)  # the app's import left threads: they would hold the exit
    return code


if __name__ == "__main__":
    raise SystemExit(main())

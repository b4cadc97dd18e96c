"""The ``graceful`` command: ``python -m graceful`` and the console script (``main``)."""

import os
import sys

from graceful.signals import StartupSignals


def main() -> int:
    """Catch the stop signals first (:meth:`StartupSignals.capture`), then import and run the
    command. ``graceful/__init__.py`` is lazy and :mod:`graceful.signals` imports nothing heavy,
    so the handlers are in before asyncio, structlog or the app is loaded."""
    StartupSignals.capture()
    from graceful.cli import main as cli_main

    try:
        return cli_main(sys.argv[1:])
    except BrokenPipeError:
        # `graceful config | head`: the reader left. No traceback, and none at exit either
        # when the interpreter flushes stdout (the recipe of Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

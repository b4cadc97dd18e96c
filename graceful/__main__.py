"""The ``graceful`` command: ``python -m graceful`` and the console script (``main``)."""

import sys

from graceful.signals import StartupSignals


def main() -> int:
    """Catch the stop signals first (:meth:`StartupSignals.capture`), then import and run the
    command. ``graceful/__init__.py`` is lazy and :mod:`graceful.signals` imports nothing heavy,
    so the handlers are in before asyncio, structlog or the app is loaded."""
    StartupSignals.capture()
    from graceful.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``graceful`` command: ``python -m graceful`` and the console script (``main``)."""

import sys

from graceful import _early


def main() -> int:
    """Catch the stop signals first (:mod:`graceful._early`), then import and run the command."""
    _early.install()
    from graceful.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

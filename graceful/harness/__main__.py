"""``python -m graceful.harness``: the ``graceful harness`` command on its own."""

from __future__ import annotations

import argparse

from graceful.harness.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="graceful harness")
add_arguments(parser)
raise SystemExit(main(parser.parse_args()))

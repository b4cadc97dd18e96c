"""``python -m graceful``."""

from graceful.cli import main

raise SystemExit(main())

"""Which requests the drain deadline cut, by name: one ``requests.cut`` line per server.

The middlewares name each request's task ``"METHOD /path"`` when the request starts, so the
line (and the watchdog's list of pending tasks, if it comes to that) says what was cut, not
only how many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from graceful.logs import get_logger

__all__ = ["log_requests_cut", "name_request"]

#: At most this many names in the line; ``count`` has them all.
SHOWN = 20


def name_request(task: asyncio.Task[Any] | None, method: str, path: str) -> None:
    """Name the task serving a request after it (``"GET /items"``)."""
    if task is not None:
        task.set_name(f"{method} {path}")


def log_requests_cut(server: str, tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Log the requests about to be cancelled at the drain deadline, if any."""
    names = sorted(task.get_name() for task in tasks if not task.done())
    if names:
        get_logger().warning(
            "requests.cut", server=server, count=len(names), requests=names[:SHOWN]
        )

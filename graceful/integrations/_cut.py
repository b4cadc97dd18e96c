"""Which requests the drain deadline cut, by name: one ``requests.cut`` line per server.

uvicorn's connections say which request each is answering; aiohttp's middleware names each
request's task ``"METHOD /path"`` (which the watchdog's list of pending tasks shows too). The
line says what was cut, not only how many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from graceful.logs import get_logger

__all__ = ["log_requests_cut", "name_request", "task_names"]

#: At most this many names in the line; ``count`` has them all.
SHOWN = 20


def name_request(task: asyncio.Task[Any] | None, method: str, path: str) -> None:
    """Name the task serving a request after it (``"GET /items"``)."""
    if task is not None:
        task.set_name(f"{method} {path}")


def task_names(tasks: Iterable[asyncio.Task[Any]]) -> list[str]:
    """The names of the tasks still running."""
    return [task.get_name() for task in tasks if not task.done()]


def log_requests_cut(server: str, requests: Sequence[str]) -> None:
    """Log the requests about to be cancelled at the drain deadline (``"GET /x"``), if any."""
    if requests:
        get_logger().warning(
            "requests.cut", server=server, count=len(requests), requests=sorted(requests)[:SHOWN]
        )

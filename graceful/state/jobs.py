"""The jobs the store's threads run, and how their outcomes reach the caller on the event loop.

A write or a call is queued with a future of the loop that made it; the thread that runs it
resolves the future through ``call_soon_threadsafe``, one wake-up of the loop for a whole batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from graceful.state.sqlite import state_error
from graceful.state.values import Row

__all__ = ["Call", "Outcome", "Write", "run_call", "settle"]


@dataclass(slots=True)
class Write:
    """Rows that must commit in the same transaction, and the caller waiting for them."""

    rows: list[Row]
    future: asyncio.Future[list[bool]]


@dataclass(slots=True)
class Call:
    """A function run on a connection's thread, in queue order; ``last`` closes the thread."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    last: bool = False


#: A future and what to resolve it with: a result, or an exception to raise.
Outcome: TypeAlias = tuple[asyncio.Future[Any], object]


def settle(loop: asyncio.AbstractEventLoop | None, outcomes: list[Outcome]) -> None:
    """Resolve futures on their loop, from a thread; one wake-up for the whole list."""
    if loop is None or not outcomes:
        return
    try:
        loop.call_soon_threadsafe(_resolve_all, outcomes)
    except RuntimeError:
        # The loop was closed under us (the process is exiting): nobody is waiting.
        pass


def _resolve_all(outcomes: list[Outcome]) -> None:
    for future, outcome in outcomes:
        if future.done():  # the caller was cancelled (the write itself stands), or settled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def run_call(job: Call, conn: sqlite3.Connection, path: str) -> Outcome:
    """Run ``job`` on ``conn``: its result, or a `StateError` naming the store."""
    try:
        return (job.future, job.fn(conn))
    except Exception as exc:
        return (job.future, state_error(path, "close failed" if job.last else "read failed", exc))

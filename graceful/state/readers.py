"""The reader threads: reads run on their own read-only connections, beside the writer (WAL
lets readers and the writer work at the same time), so a long read never delays a write.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from graceful.state.jobs import Call, run_call, settle
from graceful.state.sqlite import close_connection, state_error

__all__ = ["Readers"]


class Readers:
    """Threads that run reads, each on its own read-only connection, beside the writer."""

    def __init__(
        self, conns: list[sqlite3.Connection], path: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._path = path
        self._loop = loop
        self._queue: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._run, args=(conn,), name=f"graceful-state-read:{path}", daemon=True
            )
            for conn in conns
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``fn`` for the next free reader; the future gets its result."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(Call(fn, future, last))
        return future

    async def close(self) -> None:
        """Let the reads already queued finish, then close every reader's connection."""
        # Each thread takes exactly one `last` call and ends with it.
        closing = [self.submit(close_connection, last=True) for _ in self._threads]
        results = await asyncio.gather(*closing, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _run(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self._queue.get()
            try:
                outcome = run_call(job, conn, self._path)
            except BaseException as exc:  # a reader must answer every caller, whatever happens
                outcome = (job.future, state_error(self._path, "read failed", exc))
            settle(self._loop, [outcome])
            if job.last:
                return

"""What the runtime drains: the `Drainable` protocol and a counter of in-flight work.

Every server integration (asyncio streams, uvicorn, aiohttp) is a `Drainable`. The runtime
drives all of them through the same three steps of the shutdown sequence:

1. ``stop_accepting()`` in the ``stop_accept`` phase: listeners close, so new connections are
   refused by the kernel instead of being accepted and then reset.
2. ``drain()`` in the ``drain`` phase: idle connections are closed at once, busy ones are told to
   finish (``Connection: close``, websocket close 1001, streams told to end). It returns when
   nothing is in flight; the runtime cancels it at the drain deadline.
3. ``abort()`` in the ``cancel`` phase: whatever is still running is cut; returns how many units
   of work were cut, which decides the exit code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

__all__ = ["Drainable", "WorkTracker"]


@runtime_checkable
class Drainable(Protocol):
    """A server or worker whose connections and in-flight work the runtime drains.

    .. versionadded:: 0.1
    """

    name: str

    def inflight(self) -> int:
        """Units of work (requests, messages, jobs) being processed right now."""
        ...

    async def stop_accepting(self) -> None:
        """Close the listeners: from now on new connections are refused."""
        ...

    async def drain(self) -> None:
        """Close idle connections, ask busy ones to finish, return once nothing is in flight."""
        ...

    async def abort(self) -> int:
        """Cut what is still in flight; return how many units of work were cut."""
        ...


class WorkTracker:
    """Counts units of work in flight and wakes waiters when the count reaches zero.

    Waiting is event-driven (no polling), so a drain ends the moment the last request
    finishes.

    Args:
        name: label for logs and metrics, usually the server's name.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._count = 0
        self._total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Units of work in flight now."""
        return self._count

    @property
    def total(self) -> int:
        """Units of work started since creation."""
        return self._total

    def begin(self) -> None:
        """Mark one unit of work as started."""
        self._count += 1
        self._total += 1
        self._idle.clear()

    def end(self) -> None:
        """Mark one unit of work as finished (or cut)."""
        self._count -= 1
        if self._count <= 0:
            self._count = 0
            self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Context manager around one unit of work."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (at once when nothing is)."""
        await self._idle.wait()

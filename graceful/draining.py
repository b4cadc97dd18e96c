"""What the runtime drains, and the parts every server integration shares.

Every server integration (asyncio streams, uvicorn, aiohttp) is a `Drainable`. The runtime
drives all of them through the same three steps of the shutdown sequence:

1. ``stop_accepting()`` in the ``stop_accept`` phase: listeners close, so new connections are
   refused by the kernel instead of being accepted and then reset.
2. ``drain()`` in the ``drain`` phase: idle connections close once no work is in flight (at
   once when none is), busy ones are told to finish (``Connection: close``, websocket close
   1001, streams told to end), connections accepted without a request yet get a short grace
   for it (it may be on the wire). It returns when nothing is in flight; the runtime cancels
   it at the drain deadline.
3. ``abort()`` in the ``cancel`` phase: whatever is still running is cut; returns how many units
   of work were cut, which decides the exit code.

The pieces of the contract live here: :class:`WorkTracker` (work in flight), :class:`TaskSet`
(the tasks to cancel at the deadline, without waiting forever for one that will not stop). How
listeners and connections are closed is :mod:`graceful.closing`. A server is handed to the
runtime with ``runtime.add_drainable(server)``, which also feeds its gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from graceful.logs import get_logger
from graceful.runner import task_stack

if TYPE_CHECKING:
    from graceful.budget import Budget

__all__ = [
    "Drainable",
    "DrainableServer",
    "TaskSet",
    "WorkTracker",
    "abort_deadline",
]

# How long tasks cut by an abort outside a stop (no budget to follow) may take to exit.
_ABORT_GRACE = 0.5


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


@runtime_checkable
class DrainableServer(Drainable, Protocol):
    """A :class:`Drainable` with client connections: what :func:`register` needs for the gauges.

    .. versionadded:: 0.1
    """

    def connection_count(self) -> int:
        """Client connections open right now."""
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
        # Futures of those waiting for a change; no Event to set and clear on every request.
        self._watchers: list[asyncio.Future[None]] = []

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
        if self._watchers:
            self._wake_watchers()

    def end(self) -> None:
        """Mark one unit of work as finished (or cut)."""
        count = self._count - 1
        self._count = count if count > 0 else 0
        if self._watchers:
            self._wake_watchers()

    def _wake_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

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
        while self._count > 0:
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Return the next time a unit of work begins or ends."""
        watcher = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        try:
            await watcher
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove(watcher)


class TaskSet:
    """The tasks doing a server's work, so that an abort can cancel them.

    Cancelling is bounded: :meth:`cancel_all` waits for the cancelled tasks only until a
    deadline, and logs the ones that refuse to exit (a handler that swallows
    ``CancelledError``) with their stacks instead of waiting for them forever.

    Args:
        name: the server's label, in the log events.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def add(self, task: asyncio.Task[Any]) -> None:
        """Hold ``task`` in the set until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextmanager
    def track(self) -> Iterator[asyncio.Task[Any]]:
        """Hold the current task in the set while the block runs; yields the task.

        Raises:
            RuntimeError: called outside a task.
        """
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("TaskSet.track() must be used inside a task")
        self._tasks.add(task)
        try:
            yield task
        finally:
            self._tasks.discard(task)

    async def cancel_all(self, deadline: float) -> set[asyncio.Task[Any]]:
        """Cancel every task in the set and wait for them until ``deadline``.

        Args:
            deadline: event-loop time after which tasks still running are given up.

        Returns:
            The tasks that had not exited by the deadline (each logged as
            ``task.refused_to_exit`` with its stack).
        """
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return set()
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
        _, stuck = await asyncio.wait(tasks, timeout=timeout)
        log = get_logger()
        for task in stuck:
            log.error(
                "task.refused_to_exit",
                server=self.name,
                task=task.get_name(),
                stack=task_stack(task),
            )
        return stuck


def abort_deadline(budget: Budget | None) -> float:
    """When the tasks an ``abort()`` cancels must have exited (event-loop time).

    Half of what is left of the runtime's ``cancel`` phase. The runtime bounds each
    ``abort()`` by the end of that phase, so a task that refuses to exit has to be given up
    before then: otherwise the abort itself is cut, without logging the task, closing the
    connections or reporting what it cut. The other half is left for that, for the other
    servers and for the runtime's own tasks. Outside a stop (no budget yet) it is 0.5 s.

    Args:
        budget: the deadlines of the stop under way (``runtime.budget``), if any.

    .. versionadded:: 0.1
    """
    now = asyncio.get_running_loop().time()
    if budget is None:
        return now + _ABORT_GRACE
    return now + max(budget.cancel_end - now, 0.0) / 2

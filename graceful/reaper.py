"""Reaping orphaned children when the service runs as PID 1.

Orphans in a container are re-parented to PID 1; if PID 1 never waits for them, they pile up
as zombies. Reaping with ``waitpid(-1)`` would steal the exit status of subprocesses asyncio
(or ``subprocess``) is waiting for, so we reap only zombies that nobody collected for a whole
sweep interval, each by its own pid. The sweep reads ``/proc`` and costs microseconds; a
SIGCHLD handler is not used because uvloop forbids one (its libuv owns SIGCHLD).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["ZombieReaper", "start_reaper", "zombie_children"]


def zombie_children(parent: int | None = None) -> set[int]:
    """Pids of the zombie children of ``parent`` (this process by default), read from /proc."""
    parent = os.getpid() if parent is None else parent
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.add(int(entry))
    return found


class ZombieReaper:
    """Reaps zombies that stayed uncollected for at least one ``interval``.

    Args:
        interval: seconds between sweeps; a zombie is reaped at the second sweep that sees it.
        on_reaped: called with each reaped pid and its wait status.
        owned: the pids of children their owner collects itself, however late (the
            supervisor's zygote): never reaped, never reported as orphans.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        on_reaped: Callable[[int, int], None] | None = None,
        owned: Callable[[], Collection[int]] = frozenset,
    ) -> None:
        self.interval = interval
        self.reaped = 0
        self._on_reaped = on_reaped
        self._owned = owned
        self._seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="graceful-reaper")

    async def stop(self) -> None:
        """Stop sweeping, after one last sweep of the zombies already seen."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sweep()

    def sweep(self) -> None:
        """Reap the zombies seen by the previous sweep too; remember the new ones."""
        current = zombie_children() - set(self._owned())
        for pid in current & self._seen:
            self._reap(pid)
        self._seen = current - self._seen

    def _reap(self, pid: int) -> None:
        try:
            result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return  # somebody else collected it in the meantime
        if result is None:
            return
        self.reaped += 1
        if self._on_reaped is not None:
            self._on_reaped(pid, result.si_status)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sweep()


def start_reaper(
    reap: bool | None, log: Any, *, owned: Callable[[], Collection[int]] = frozenset
) -> ZombieReaper | None:
    """Start reaping if asked to, or (``reap`` is ``None``) if this process is PID 1.

    Each reaped zombie is logged as ``zombie.reaped``; ``owned`` as for :class:`ZombieReaper`.
    """
    if not (reap or (reap is None and os.getpid() == 1)):
        return None
    reaper = ZombieReaper(
        on_reaped=lambda pid, status: log.info("zombie.reaped", pid=pid, status=status),
        owned=owned,
    )
    reaper.start()
    return reaper

"""One stack of everything a service must close, unwound last-in first-out in ``close``.

Close hooks, cleanup contexts and resources entered with ``runtime.enter`` share one stack,
shaped like :class:`contextlib.AsyncExitStack`: what was set up last is closed first, whatever
kind it is. A cleanup context registered before ``run`` keeps the place of its registration
(it is entered at startup into a slot reserved for it), so the close order is the order in
which the service described itself, reversed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

from graceful.hooks import HookFunc

__all__ = ["Closer", "Closers"]

T = TypeVar("T")


@dataclass(slots=True)
class Closer:
    """One entry of the stack: what to call in ``close``, if anything was set up.

    .. versionadded:: 0.1
    """

    name: str
    func: HookFunc | None = None
    timeout: float | None = None


class Closers:
    """The LIFO stack of closers of one runtime.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._stack: list[Closer] = []

    def push(self, name: str, func: HookFunc, *, timeout: float | None = None) -> None:
        """Close ``func`` after everything pushed later."""
        self._stack.append(Closer(name, func, timeout))

    def reserve(self, name: str) -> Closer:
        """Keep a place for a resource entered later (at startup); empty places are skipped."""
        slot = Closer(name)
        self._stack.append(slot)
        return slot

    async def enter(
        self, resource: AbstractAsyncContextManager[T], *, name: str, slot: Closer | None = None
    ) -> T:
        """Enter ``resource`` now and push its exit (into ``slot`` if one was reserved)."""
        value = await resource.__aenter__()

        async def close() -> None:
            await resource.__aexit__(None, None, None)

        if slot is None:
            self.push(name, close)
        else:
            slot.func = close
        return value

    def unwind(self) -> list[Closer]:
        """Take every closer with something to close, last pushed first; the stack is empty."""
        closers = [closer for closer in reversed(self._stack) if closer.func is not None]
        self._stack.clear()
        return closers

"""Cut an app's startup short when a stop comes first: uvicorn's lifespan and aiohttp's.

``graceful serve`` races the server's start against the stop (see
:func:`graceful.serve.app.serve_target`). Cancelling the start is enough for aiohttp, whose
``on_startup`` runs in the task that is cancelled; uvicorn runs the ASGI lifespan in a task of
its own that nothing references once its startup is cancelled, so the app would go on waiting
(a database that does not answer) until the loop closed and cancelled it there, with the
framework's traceback. :class:`AbortableLifespan` keeps that task and ends it quietly.

uvicorn is imported here: import this module only for an ASGI app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.lifespan.on import LifespanOn

__all__ = ["AbortableLifespan", "LifespanWatch"]


class AbortableLifespan(LifespanOn):
    """uvicorn's lifespan (``on`` and ``auto``), with :meth:`abort`."""

    task: asyncio.Task[Any] | None = None
    aborted = False

    async def main(self) -> None:
        self.task = asyncio.current_task()
        await super().main()

    async def send(self, message: Any) -> None:
        if self.aborted:
            # The app reporting the cancellation we caused (Starlette sends
            # ``lifespan.startup.failed`` with the traceback): not a failure of the app.
            return
        await super().send(message)

    async def abort(self) -> None:
        """Cancel the app's lifespan and wait for it to end; its shutdown half never runs."""
        # startup_failed: uvicorn's main() then returns without logging the cancellation, as
        # after a failure the app reported itself.
        self.aborted = self.startup_failed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


class LifespanWatch:
    """Keeps hold of the lifespan uvicorn creates for ``config``, to tell whether its startup
    is under way and to cut it short.

    Args:
        config: the server's configuration; loaded here if it is not, and its
            ``lifespan_class`` replaced by one that records what it creates.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config
        self.lifespan: Any = None
        if not config.loaded:
            config.load()
        base = config.lifespan_class
        made = AbortableLifespan if base is LifespanOn else base

        def create(config: uvicorn.Config) -> Any:
            self.lifespan = made(config)
            return self.lifespan

        config.lifespan_class = create

    def starting(self) -> bool:
        """The app's lifespan startup has not completed yet (or not begun).

        ``lifespan="off"`` has no startup: false as soon as the server began to start.
        """
        if self.lifespan is None:
            return True
        done = getattr(self.lifespan, "startup_event", None)
        return done is not None and not done.is_set()

    async def abort(self) -> None:
        """Cancel the lifespan startup under way, if any."""
        if isinstance(self.lifespan, AbortableLifespan):
            await self.lifespan.abort()

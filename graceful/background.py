"""Background work: loops that never end by themselves, which a stop cancels, not awaits.

A cache poller started in a FastAPI lifespan (``asyncio.create_task(poll())``) or in an aiohttp
``on_startup`` handler is not work a client is waiting for: uvicorn leaves it running until the
loop closes. The drain must not wait for it (it never ends), and cancelling it is no loss. Work
a request handler started and left running is different (a job a client was told was
accepted), so the runtime tells the two apart by where a task was started:

- :func:`capture_tasks` records the tasks started while a block runs, by the code running in
  it and every task that code starts (the app's lifespan startup, ``on_startup``);
- ``runtime.create_task(coro, background=True)`` marks one task explicitly.

The capture installs a task factory only for the length of the block, so serving requests
costs nothing; a context variable limits it to the block's own code (a probe of the admin
server answered meanwhile is not the app's background work).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine, Iterator
from typing import Any

from graceful.draining import TaskSet
from graceful.runner import task_label

__all__ = ["awaiting", "cancel_background", "capture_tasks"]

_capturing: contextvars.ContextVar[TaskSet | None] = contextvars.ContextVar(
    "graceful_capturing", default=None
)

_TaskFactory = Any  # asyncio's own annotation of a task factory is private


@contextlib.contextmanager
def capture_tasks(into: TaskSet) -> Iterator[None]:
    """Add to ``into`` every task that the code of this block starts, directly or not.

    Tasks started from other contexts meanwhile (other connections, other servers) are not
    captured. A task factory the loop already had keeps making the tasks.

    Args:
        into: where the captured tasks are held until they are done.
    """
    loop = asyncio.get_running_loop()
    previous: _TaskFactory = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        if previous is None:
            task: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        else:
            task = previous(loop, coro, **kwargs)
        owner = _capturing.get()
        if owner is not None and isinstance(task, asyncio.Task):
            owner.add(task)
        return task

    token = _capturing.set(into)
    loop.set_task_factory(factory)  # type: ignore[arg-type]  # typeshed's form is private
    try:
        yield
    finally:
        _capturing.reset(token)
        if loop.get_task_factory() is factory:  # someone else's replacement stays
            loop.set_task_factory(previous)


async def cancel_background(tasks: TaskSet, deadline: float, log: Any) -> list[str]:
    """Cancel never-ending background work and wait for it until ``deadline``.

    Not cut work: logged at info (``tasks.background_cancelled``), the exit code unchanged.

    Returns:
        The labels of the tasks cancelled.
    """
    running = [task for task in tasks if not task.done()]
    if not running:
        return []
    labels = [task_label(task) for task in running]
    log.info(
        "tasks.background_cancelled",
        count=len(running),
        tasks=labels,
        # Where each was when cancelled: a queue worker cut mid-job shows it here.
        waiting_in=[awaiting(task) for task in running],
    )
    await tasks.cancel_all(deadline)
    return labels


def awaiting(task: asyncio.Task[Any]) -> str:
    """The chain of coroutines a task is suspended in, outermost first (``poll > sleep``)."""
    names: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None and len(names) < 8:
        name = getattr(awaited, "__qualname__", None)
        if name is None:
            break
        names.append(name)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return " > ".join(names)

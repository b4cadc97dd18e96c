"""Owning the process: a loop of our own, and the steps ``asyncio.run`` would do, bounded.

``Runtime.run`` is a container's entrypoint, so the stop must end the process before SIGKILL.
``asyncio.run`` and ``asyncio.Runner`` do their closing steps without a bound: on Python 3.11
``Runner.close()`` waits for the default executor's threads for as long as they run, so one
stuck thread holds the exit until SIGKILL. Here each step has the exit deadline, and what it had
to give up is named in the logs: tasks nobody tracked, suspended async generators, threads.

:func:`end_process` is the last step of an entry point that owns the whole process: the exit
the interpreter would make, without its module teardown.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread as futures_thread
import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from graceful.status import ExitCode

__all__ = [
    "cancel_leftovers",
    "end_child_processes",
    "end_if_threads_hold",
    "end_process",
    "exit_now_if_threads_block",
    "pending_labels",
    "run_on_new_loop",
    "task_label",
    "threads_holding_the_exit",
]

LEFTOVER_HINT = (
    "work a handler started and left running counts as cut: start it with "
    "graceful.current_runtime().create_task(...) so the drain waits for it, or, for a loop "
    "that never ends (a poller), with create_task(..., background=True) so the stop cancels "
    "it without counting it as cut"
)


def run_on_new_loop(
    factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, int]
) -> int:
    """Run ``coro`` to completion on a new loop, then close the loop without waiting on threads.

    ``loop.close()`` shuts the default executor down with ``wait=False``.
    """
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def cancel_leftovers(deadline: float, log: Any) -> tuple[list[str], bool]:
    """Cancel tasks nobody tracked and close suspended async generators, until ``deadline``.

    For the loop's owner only: these would otherwise be cancelled silently when it closes.

    Returns:
        The labels of the tasks cancelled, and whether the async generators were all closed.
    """
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    await asyncio.sleep(0)  # let cancellations requested earlier finish first
    # A task already being cancelled (cancelling() > 0) was cut by its owner, not left over.
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done() and not t.cancelling()]
    labels = [task_label(task) for task in tasks]
    for task in tasks:
        task.cancel()
    if tasks:
        log.warning("tasks.leftover_cancelled", count=len(tasks), tasks=labels, hint=LEFTOVER_HINT)
        _, stuck = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.0))
        for task in stuck:
            log.error("task.refused_to_exit", task=task.get_name(), stack=task_stack(task))
    try:
        async with asyncio.timeout_at(deadline):
            await loop.shutdown_asyncgens()
    except TimeoutError:
        log.error("shutdown.asyncgens_abandoned", reason="exit deadline")
        return labels, False
    return labels, True


def end_child_processes(time_left: float, log: Any) -> None:
    """Stop the app's ``multiprocessing`` children that would hold the exit.

    At exit ``multiprocessing`` joins every child that is not a daemon, for as long as it runs:
    one the app left running would hold the process until the watchdog ends it (exit 6). They
    get SIGTERM now, the rest of the budget to exit, then SIGKILL.
    """
    mp = sys.modules.get("multiprocessing")
    if mp is None:  # never imported: no child of its kind
        return
    children = [child for child in mp.active_children() if not child.daemon]
    if not children:
        return
    deadline = time.monotonic() + time_left
    for child in children:
        with contextlib.suppress(OSError):
            child.terminate()
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
    killed = [child for child in children if child.is_alive()]
    for child in killed:
        with contextlib.suppress(OSError):
            child.kill()
        child.join(0.2)
    log.warning(
        "shutdown.children_stopped",
        children=[f"{child.name} (pid {child.pid})" for child in children],
        killed=[child.pid for child in killed],
        reason="multiprocessing children the app left running would hold the exit",
    )


def threads_holding_the_exit() -> list[threading.Thread]:
    """The threads the interpreter's exit would wait for, that nothing will tell to end.

    Not daemons, not the main thread, and not a ``ThreadPoolExecutor``'s workers (the app's,
    or the loop's default executor behind ``asyncio.to_thread``): those idle in their queue
    until the interpreter's exit hook wakes them, so joining them before it would wait
    forever (found by attack: a module-level executor made every stop exit 6 after 9 s).
    """
    pooled = set(getattr(futures_thread, "_threads_queues", ()))
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t not in pooled
    ]


def exit_now_if_threads_block(code: int, time_left: float, log: Any) -> None:
    """Join threads that are not daemons until the deadline; exit at once if any is stuck.

    The interpreter would otherwise wait for them forever at exit (``threading._shutdown``).
    """
    others = threads_holding_the_exit()
    if not others:
        return
    deadline = time.monotonic() + time_left
    for thread in others:
        thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        code = int(ExitCode.OVERRAN)  # the process could not end on its own
        log.error("shutdown.threads_abandoned", threads=stuck, exit_code=code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def end_if_threads_hold(code: int) -> None:
    """Exit with ``code`` at once if threads that are not daemons would hold the exit.

    For an exit with no runtime to wait for them: the app's import started a thread, then
    failed or was stopped. The interpreter would join that thread forever, and the container
    would stay up ("running" for its orchestrator, ``docker stop`` ending in SIGKILL). They are
    named in a ``process.threads_abandoned`` line; nothing was served, so nothing is cut.
    """
    others = threads_holding_the_exit()
    if not others:
        return
    from graceful.logs import last_line

    last_line(
        "process.threads_abandoned",
        level="warning",
        threads=[t.name for t in others],
        exit_code=code,
    )
    os._exit(code)


def end_process(code: int) -> NoReturn:
    """End the process with ``code``: the interpreter's exit, without its module teardown.

    What an exit owes the program still runs, in the interpreter's order: threads that are
    not daemons are joined (and the thread pools' exit hooks run), then every ``atexit``
    handler (``logging.shutdown``, ``weakref.finalize``, the app's own), then stdout and
    stderr are flushed. Only the teardown is skipped: modules emptied one by one, the last
    collections, C libraries' destructors (uvloop's thread pool). With a service's modules
    loaded that took 5-13 ms after a stop that itself took 2-4 ms (bench/results/drain.md).
    multiprocessing ends its forked children the same way (``os._exit`` after its own exit
    hooks), without even running the app's ``atexit`` handlers.

    Objects still alive are not finalized: a file left open and never flushed loses its
    buffer, as after any ``os._exit``. Python does not promise ``__del__`` at exit either;
    close such things in a shutdown hook, which the stop runs.

    Only for the very end of an entry point (nothing after it runs); off the main thread it
    raises ``SystemExit(code)`` instead.

    .. versionadded:: 0.1
    """
    if threading.current_thread() is not threading.main_thread():
        raise SystemExit(code)
    # As Py_FinalizeEx begins: join the threads, then the atexit handlers (LIFO), which run
    # once: _run_exitfuncs clears them.
    shutdown: Callable[[], None] | None = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


def pending_labels(loop: asyncio.AbstractEventLoop | None) -> list[str]:
    """Labels of the loop's unfinished tasks; safe from another thread (it only reads)."""
    if loop is None:
        return []
    try:
        return [task_label(t) for t in asyncio.all_tasks(loop) if not t.done()]
    except Exception:  # the set changed under us: the watchdog has no time to retry
        return []


def task_label(task: asyncio.Task[Any]) -> str:
    """``name (coroutine)``: enough to find the code that started a task."""
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{task.get_name()} ({where})"


def task_stack(task: asyncio.Task[Any]) -> str:
    """The innermost frames of a task, as ``print_stack`` writes them."""
    out = io.StringIO()
    task.print_stack(limit=8, file=out)
    return out.getvalue()

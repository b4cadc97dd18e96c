"""Background work in-process: what is captured as the app's, and when the stop cancels it.

(The same with real servers and real signals: ``test_apps_unchanged.py``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from graceful import Config, Runtime
from graceful.background import capture_tasks
from graceful.draining import TaskSet


async def forever() -> None:
    await asyncio.Event().wait()


def make_runtime() -> Runtime:
    return Runtime(Config(handle_signals=False, stop_timeout=5.0), registry=CollectorRegistry())


async def test_capture_takes_the_blocks_tasks_and_their_children_not_other_contexts() -> None:
    """1. Outside the block, a task is started (another connection's work). 2. In the block, a
    task is started that starts a child during the block. Result: the block's task and its
    child are captured, the other is not; after the block nothing more is captured."""
    captured = TaskSet("captured")
    started = asyncio.Event()
    outsider: list[asyncio.Task[Any]] = []

    async def other_context() -> None:
        await started.wait()
        outsider.append(asyncio.create_task(forever()))

    async def parent() -> None:
        child = asyncio.create_task(forever(), name="child")
        del child
        await forever()

    other = asyncio.create_task(other_context())
    await asyncio.sleep(0)
    with capture_tasks(captured):
        poller = asyncio.create_task(parent(), name="poller")
        started.set()
        await asyncio.sleep(0.01)
    later = asyncio.create_task(forever())
    try:
        names = sorted(t.get_name() for t in captured)
        assert names == ["child", "poller"]
        assert outsider
        assert outsider[0] not in set(captured)
        assert later not in set(captured)
        assert asyncio.get_running_loop().get_task_factory() is None
    finally:
        for task in [*captured, *outsider, other, later]:
            task.cancel()
        await asyncio.gather(*captured, *outsider, other, later, return_exceptions=True)
        del poller


async def test_capture_keeps_a_task_factory_the_loop_already_had() -> None:
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        captured = TaskSet("captured")
        with capture_tasks(captured):
            task = asyncio.create_task(forever())
        assert made == ["forever"]
        assert set(captured) == {task}
        assert loop.get_task_factory() is factory
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        loop.set_task_factory(None)


async def test_background_work_is_cancelled_before_the_flush_and_is_not_cut() -> None:
    """1. ``create_task(forever(), background=True)`` and a tracked task that ends. 2. Stop.
    Result: the drain did not wait for the background loop (the tracked one was awaited); the
    loop was cancelled before the flush hooks ran; exit code 0."""
    runtime = make_runtime()
    seen_at_flush: list[bool] = []
    finished: list[str] = []
    tasks: list[asyncio.Task[Any]] = []

    async def short_job() -> None:
        await asyncio.sleep(0.05)
        finished.append("job")

    async def main(rt: Runtime) -> None:
        tasks.append(rt.create_task(forever(), name="poller", background=True))
        rt.create_task(short_job(), name="job")
        rt.on_shutdown(lambda: seen_at_flush.append(tasks[0].cancelled()))
        rt.request_stop("test")

    code = await asyncio.wait_for(runtime.serve(main), 10)
    assert code == 0
    assert finished == ["job"]
    assert seen_at_flush == [True]


async def test_control_the_same_loop_as_tracked_work_holds_the_drain_and_is_cut() -> None:
    """The control: without ``background=True`` the drain waits for the loop until its deadline
    and the stop exits 3 (work cut)."""
    runtime = Runtime(Config(handle_signals=False, stop_timeout=1.5), registry=CollectorRegistry())

    async def main(rt: Runtime) -> None:
        rt.create_task(forever(), name="poller")
        rt.request_stop("test")

    assert await asyncio.wait_for(runtime.serve(main), 10) == 3

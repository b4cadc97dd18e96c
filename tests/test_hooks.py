"""``graceful.hooks``: one hook run in isolation, bounded by its deadline, and named.

``run_hook`` never raises because of the hook (only when its caller is cancelled): every
fault becomes an outcome. Each fault below has a control that shows the fault is real.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
from collections.abc import Callable

import pytest

from graceful.hooks import HookOutcome, Outcome, Phase, hook_name, run_hook


async def run(func: Callable[[], object], *, deadline: float | None = None) -> HookOutcome:
    return await run_hook(func, name="hook", phase=Phase.FLUSH, deadline=deadline)


def block_loop_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Hold the loop thread (as a synchronous call would) until the loop's clock reads ``when``."""
    while loop.time() < when:
        time.sleep(0.005)


# --- the kinds of hooks ---------------------------------------------------------------------------


async def test_async_hook_is_awaited() -> None:
    ran = asyncio.Event()

    async def hook() -> None:
        await asyncio.sleep(0)
        ran.set()

    outcome = await run(hook)
    assert ran.is_set()
    assert (outcome.name, outcome.phase, outcome.outcome, outcome.error) == (
        "hook",
        Phase.FLUSH,
        Outcome.OK,
        None,
    )
    assert outcome.seconds >= 0


async def test_plain_function_runs_on_the_loop_thread() -> None:
    threads: list[int] = []
    outcome = await run(lambda: threads.append(threading.get_ident()))
    assert outcome.outcome is Outcome.OK
    assert threads == [threading.get_ident()]


async def test_plain_function_returning_a_coroutine_has_it_awaited() -> None:
    """``server.close``-style hooks: a plain call that hands back the awaitable to finish."""
    finished = asyncio.Event()

    async def finish() -> None:
        await asyncio.sleep(0)
        finished.set()

    outcome = await run(finish)  # control: the coroutine function itself
    assert outcome.outcome is Outcome.OK
    assert finished.is_set()
    finished.clear()

    def close() -> object:
        return finish()

    outcome = await run(close)
    assert outcome.outcome is Outcome.OK
    assert finished.is_set()


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_raising_hook_is_failed_with_the_error(kind: str) -> None:
    def plain() -> None:
        raise ValueError("disk full")

    async def coroutine() -> None:
        raise ValueError("disk full")

    outcome = await run(plain if kind == "plain" else coroutine)
    assert outcome.outcome is Outcome.FAILED
    assert outcome.error == "ValueError: disk full"


async def test_sys_exit_in_a_hook_is_a_failure_not_the_end_of_the_loop() -> None:
    def plain() -> None:
        sys.exit(3)

    async def coroutine() -> None:
        sys.exit(3)

    outcome = await run(plain)
    assert (outcome.outcome, outcome.error) == (Outcome.FAILED, "SystemExit: 3")
    outcome = await run(coroutine)
    assert outcome.outcome is Outcome.FAILED
    assert outcome.error == "HookError: the hook called sys.exit(3)"
    # The loop is still ours: more work runs on it.
    await asyncio.sleep(0)


async def test_hook_whose_own_task_is_cancelled_is_failed_not_raised() -> None:
    async def hook() -> None:
        raise asyncio.CancelledError

    outcome = await run(hook)
    assert (outcome.outcome, outcome.error) == (Outcome.FAILED, "cancelled")


async def test_plain_hook_raising_cancelled_error_is_failed_not_raised() -> None:
    cancelled = asyncio.get_running_loop().create_future()
    cancelled.cancel()
    outcome = await run(cancelled.result)
    assert outcome.outcome is Outcome.FAILED


# --- deadlines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_hook_blocking_the_loop_past_its_deadline_is_timed_out(kind: str) -> None:
    """1. A hook holds the loop thread until 0.1 s past its deadline, then returns.
    2. Control: the same hook with no deadline is fine.
    Result: timed out, because the stop's other deadlines were lost while it held the loop."""
    loop = asyncio.get_running_loop()

    def make(deadline: float) -> Callable[[], object]:
        def plain() -> None:
            block_loop_until(loop, deadline + 0.1)

        async def coroutine() -> None:
            block_loop_until(loop, deadline + 0.1)

        return plain if kind == "plain" else coroutine

    deadline = loop.time() + 0.01
    outcome = await run(make(deadline), deadline=deadline)
    assert outcome.outcome is Outcome.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.startswith("blocked the event loop until")

    control = await run(make(loop.time() + 0.01), deadline=None)
    assert control.outcome is Outcome.OK


async def test_hanging_hook_is_cut_at_its_deadline_and_its_cleanup_runs() -> None:
    cleaned_up = asyncio.Event()

    async def hook() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    loop = asyncio.get_running_loop()
    outcome = await run(hook, deadline=loop.time() + 0.01)
    assert (outcome.outcome, outcome.error) == (Outcome.TIMED_OUT, "cut at its deadline")
    assert cleaned_up.is_set()


async def test_hook_swallowing_cancellation_is_abandoned_after_the_grace() -> None:
    """1. The hook catches every cancellation and keeps waiting for ``release``.
    2. run_hook returns at its deadline plus a short grace, the hook still running.
    Result: timed out; the hook ends only when released, and nothing is left to warn about."""
    release = asyncio.Event()
    refusals = 0
    tasks: list[asyncio.Task[object]] = []

    async def stubborn() -> str:
        nonlocal refusals
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        while True:
            try:
                await release.wait()
                return "released"
            except asyncio.CancelledError:
                refusals += 1

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):  # a failure guard: run_hook must not wait for the hook
            outcome = await run(stubborn, deadline=loop.time() + 0.01)
        assert (outcome.outcome, outcome.error) == (Outcome.TIMED_OUT, "cut at its deadline")
        (task,) = tasks
        assert refusals == 1  # it was asked to stop, and refused
        assert not task.done()  # run_hook returned without it
    finally:
        release.set()
    assert await task == "released"


async def test_cancelling_the_caller_cancels_the_hook_and_raises() -> None:
    started = asyncio.Event()
    hook_cancelled = asyncio.Event()

    async def hook() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            hook_cancelled.set()
            raise

    caller = asyncio.get_running_loop().create_task(run(hook))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(hook_cancelled.wait(), timeout=10)


# --- names ----------------------------------------------------------------------------------------


async def _module_level_hook() -> None:
    pass


class _Resource:
    async def close(self) -> None:
        pass

    async def __aenter__(self) -> _Resource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def test_hook_name_is_module_and_qualified_name() -> None:
    assert hook_name(_module_level_hook) == "tests.test_hooks._module_level_hook"
    assert hook_name(_Resource().close) == "tests.test_hooks._Resource.close"
    assert hook_name(print) == "builtins.print"


def test_hook_name_of_a_nested_function_says_where_it_was_defined() -> None:
    def inner() -> None:
        pass

    assert hook_name(inner) == (
        "tests.test_hooks.test_hook_name_of_a_nested_function_says_where_it_was_defined"
        ".<locals>.inner"
    )


def test_hook_name_leaves_out_main() -> None:
    def in_main() -> None:
        pass

    in_main.__module__ = "__main__"
    assert hook_name(in_main) == ("test_hook_name_leaves_out_main.<locals>.in_main")


def test_hook_name_of_an_entered_resource_names_its_class_without_an_address() -> None:
    name = hook_name(_Resource())
    assert "0x" not in name
    assert name.count("tests.test_hooks") == 1


def test_hook_name_of_a_partial_does_not_repeat_the_module() -> None:
    assert not hook_name(functools.partial(print, "x")).startswith("functools.functools.")


@pytest.mark.parametrize("kind", ["plain", "async"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, type("Boom", (BaseException,), {})])
async def test_a_hook_raising_a_base_exception_fails_alone(
    kind: str, error: type[BaseException]
) -> None:
    """KeyboardInterrupt or another BaseException from a hook is its failure, not the end of
    the stop (it used to escape run_hook: no close, no report)."""

    def plain() -> None:
        raise error()

    async def coroutine() -> None:
        raise error()

    outcome = await run(plain if kind == "plain" else coroutine)
    assert outcome.outcome is Outcome.FAILED

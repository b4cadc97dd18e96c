"""The phase machine in-process: order, hook isolation, deadlines, escalation, startup."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from graceful import (
    Config,
    ExitCode,
    HookError,
    LifecycleState,
    Phase,
    Runtime,
    current_runtime,
)
from graceful.draining import WorkTracker
from graceful.testing import run_runtime

HANG_GUARD = 20.0


def make_runtime(**config: object) -> Runtime:
    settings: dict[str, object] = {"handle_signals": False, "stop_timeout": 5.0}
    settings.update(config)
    return Runtime(Config(**settings), registry=CollectorRegistry())  # type: ignore[arg-type]


class TrackedServer:
    """A Drainable with real in-flight accounting, recording the calls the runtime makes."""

    def __init__(self, calls: list[str]) -> None:
        self.name = "tracked"
        self.tracker = WorkTracker("tracked")
        self.calls = calls

    def inflight(self) -> int:
        return self.tracker.count

    async def stop_accepting(self) -> None:
        self.calls.append("stop_accepting")

    async def drain(self) -> None:
        self.calls.append("drain")
        await self.tracker.wait_idle()

    async def abort(self) -> int:
        self.calls.append("abort")
        cut = self.tracker.count
        for _ in range(cut):
            self.tracker.end()
        return cut


async def test_phases_run_in_order_and_close_is_lifo() -> None:
    """1. register hooks in every phase and two cleanup contexts; 2. stop.

    Result: phases in the documented order; flush hooks in registration order; close hooks
    and cleanup contexts interleaved last-registered-first; exit code 0.
    """
    calls: list[str] = []
    runtime = make_runtime()
    runtime.add_drainable(TrackedServer(calls))

    @runtime.cleanup_context
    async def database() -> AsyncIterator[None]:
        calls.append("open database")
        yield
        calls.append("close database")

    @runtime.on_shutdown(phase=Phase.CLOSE)
    async def close_client() -> None:
        calls.append("close client")

    @runtime.cleanup_context
    async def cache() -> AsyncIterator[None]:
        calls.append("open cache")
        yield
        calls.append("close cache")

    for phase in ("unready", "stop_accept", "drain"):

        async def hook(phase: str = phase) -> None:
            calls.append(f"{phase} hook")

        runtime.on_shutdown(hook, phase=phase)

    @runtime.on_shutdown
    async def flush_one() -> None:
        calls.append("flush 1")

    @runtime.on_shutdown(phase="flush")
    async def flush_two() -> None:
        calls.append("flush 2")

    async with run_runtime(runtime=runtime):
        assert runtime.ready
        assert calls == ["open database", "open cache"]
    assert calls == [
        "open database",
        "open cache",
        "unready hook",
        "stop_accepting",
        "stop_accept hook",
        "drain",
        "drain hook",
        "flush 1",
        "flush 2",
        "close cache",
        "close client",
        "close database",
    ]
    assert runtime.exit_code == ExitCode.OK
    assert runtime.state is LifecycleState.STOPPED


async def test_readiness_turns_off_the_moment_a_stop_begins() -> None:
    runtime = make_runtime()
    seen: list[bool] = []

    @runtime.on_shutdown(phase="unready")
    async def record() -> None:
        seen.append(runtime.ready)

    async with run_runtime(runtime=runtime):
        assert runtime.ready
        runtime.request_stop()
        assert not runtime.ready
        assert runtime.stopping
    assert seen == [False]


async def test_a_failing_hook_does_not_stop_the_next_one() -> None:
    runtime = make_runtime()
    ran: list[str] = []

    @runtime.on_shutdown
    async def broken() -> None:
        raise RuntimeError("disk on fire")

    @runtime.on_shutdown
    async def next_one() -> None:
        ran.append("next")

    with capture_logs() as logs:
        async with run_runtime(runtime=runtime):
            pass
    assert ran == ["next"]
    assert runtime.exit_code == ExitCode.HOOK_FAILED
    failed = [e for e in logs if e["event"] == "hook.failed"]
    assert failed[0]["hook"].endswith("broken")
    assert "disk on fire" in failed[0]["error"]
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["failed_hooks"] == [failed[0]["hook"]]


@pytest.mark.parametrize("swallow_cancel", [False, True])
async def test_a_hanging_hook_is_cut_at_its_timeout(swallow_cancel: bool) -> None:
    """A hook that hangs (even one that swallows cancellation) is cut; the rest still run."""
    runtime = make_runtime(stop_timeout=30.0)
    ran: list[str] = []

    @runtime.on_shutdown(timeout=0.2)
    async def hangs() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not swallow_cancel or "swallowed" in ran:
                    raise
                ran.append("swallowed")  # once: the test's loop must be able to end it

    @runtime.on_shutdown(phase="close")
    async def closes() -> None:
        ran.append("closed")

    async with asyncio.timeout(HANG_GUARD):
        async with run_runtime(runtime=runtime):
            pass
    assert "closed" in ran
    assert runtime.exit_code == ExitCode.HOOK_FAILED
    assert (runtime.time_left() or 0.0) > 20


async def test_work_longer_than_the_budget_is_cancelled_and_flush_still_runs() -> None:
    runtime = make_runtime(stop_timeout=1.0)
    calls: list[str] = []
    server = TrackedServer(calls)
    runtime.add_drainable(server)
    server.tracker.begin()  # a request that never finishes by itself

    @runtime.on_shutdown
    async def flush() -> None:
        calls.append("flush")

    async with asyncio.timeout(HANG_GUARD):
        async with run_runtime(runtime=runtime):
            runtime.create_task(asyncio.sleep(3600), name="endless")
    assert calls[-2:] == ["abort", "flush"]
    assert runtime.exit_code == ExitCode.WORK_CUT
    assert runtime.registry.get_sample_value("graceful_work_cancelled_total") == 2


async def test_tracked_work_that_finishes_in_time_is_awaited() -> None:
    runtime = make_runtime()
    done: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0.2)
        done.append("job")

    async with run_runtime(runtime=runtime):
        runtime.create_task(job())
    assert done == ["job"]
    assert runtime.exit_code == ExitCode.OK


async def test_main_that_loops_until_stopping() -> None:
    iterations: list[int] = []

    async def main(rt: Runtime) -> None:
        rt.mark_ready()
        while not rt.stopping:
            iterations.append(1)
            await asyncio.sleep(0.01)

    async with run_runtime(Config(handle_signals=False), main=main) as runtime:
        await asyncio.sleep(0.05)
        assert runtime.ready
    assert iterations
    assert runtime.exit_code == ExitCode.OK


async def test_main_crash_stops_with_exit_code_1_and_runs_hooks() -> None:
    runtime = make_runtime()
    ran: list[str] = []
    runtime.on_shutdown(lambda: _append(ran, "flushed"))

    async def main(rt: Runtime) -> None:
        raise ValueError("bad wiring")

    code = await asyncio.wait_for(runtime.serve(main), HANG_GUARD)
    assert code == ExitCode.ERROR
    assert ran == ["flushed"]
    assert runtime.stop_reason == "main crashed"


async def test_startup_failure_closes_what_was_started() -> None:
    runtime = make_runtime()
    calls: list[str] = []

    @runtime.cleanup_context
    async def first() -> AsyncIterator[None]:
        calls.append("open first")
        yield
        calls.append("close first")

    @runtime.on_startup
    async def broken() -> None:
        raise OSError("cannot reach database")

    @runtime.cleanup_context
    async def never() -> AsyncIterator[None]:
        calls.append("open never")
        yield

    code = await asyncio.wait_for(runtime.serve(), HANG_GUARD)
    assert code == ExitCode.ERROR
    assert calls == ["open first", "close first"]


async def test_stop_during_startup_aborts_it_cleanly() -> None:
    runtime = make_runtime()
    calls: list[str] = []
    started = asyncio.Event()

    @runtime.cleanup_context
    async def first() -> AsyncIterator[None]:
        calls.append("open first")
        yield
        calls.append("close first")

    @runtime.on_startup
    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    serving = asyncio.ensure_future(runtime.serve())
    await started.wait()
    runtime.request_stop("signal SIGTERM")
    code = await asyncio.wait_for(serving, HANG_GUARD)
    assert code == ExitCode.OK
    assert calls == ["open first", "close first"]


async def test_second_signal_skips_the_drain() -> None:
    """1. serve with work that never ends and a 30 s budget; 2. SIGTERM; 3. SIGTERM again.

    Result: the stop goes straight to cancel and flush; it did *not* wait the drain budget.
    """
    runtime = make_runtime(handle_signals=True, stop_timeout=30.0, repeat_window=0.0)
    flushed = asyncio.Event()
    draining = asyncio.Event()
    runtime.on_shutdown(lambda: _set(flushed))
    runtime.on_shutdown(lambda: _set(draining), phase="drain")
    async with asyncio.timeout(HANG_GUARD):
        async with run_runtime(runtime=runtime):
            runtime.create_task(asyncio.sleep(3600))
            signal.raise_signal(signal.SIGTERM)
            await draining.wait()
            assert runtime.phase is Phase.DRAIN
            signal.raise_signal(signal.SIGTERM)
            await flushed.wait()
    assert runtime.exit_code == ExitCode.WORK_CUT
    assert (runtime.time_left() or 0.0) > 20


async def test_signal_handlers_are_restored_after_serving() -> None:
    def previous(signum: int, frame: object) -> None:
        pass

    original = signal.signal(signal.SIGTERM, previous)
    try:
        runtime = make_runtime(handle_signals=True)
        async with run_runtime(runtime=runtime):
            assert signal.getsignal(signal.SIGTERM) != previous
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_a_replaced_handler_is_noticed_and_taken_back() -> None:
    runtime = make_runtime(handle_signals=True, ownership_interval=0.01)
    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD), run_runtime(runtime=runtime):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # another library's doing
            while signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
                await asyncio.sleep(0.01)  # the ownership watch takes it back
            signal.raise_signal(signal.SIGTERM)
            await runtime.wait_stopping()
    replaced = [e for e in logs if e["event"] == "signals.handler_replaced"]
    assert replaced
    assert replaced[0]["replaced"] == {"SIGTERM": "SIG_IGN"}
    assert runtime.stop_reason == "signal SIGTERM"


async def test_signal_storm_gives_one_shutdown() -> None:
    runtime = make_runtime(handle_signals=True)
    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD), run_runtime(runtime=runtime):
            for _ in range(100):
                signal.raise_signal(signal.SIGTERM)
            await runtime.wait_stopped()
    assert [e["event"] for e in logs].count("shutdown.started") == 1
    assert runtime.exit_code == ExitCode.OK
    assert (
        runtime.registry.get_sample_value("graceful_signals_received_total", {"signal": "SIGTERM"})
        == 100
    )


async def test_report_summarises_the_stop() -> None:
    runtime = make_runtime()
    runtime.on_shutdown(lambda: _flush(runtime, 7))
    with capture_logs() as logs:
        async with run_runtime(runtime=runtime):
            pass
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["exit_code"] == 0
    assert report["flushed"] == 7
    assert list(report["phases"]) == [p.value for p in Phase]
    assert report["reason"] == "test finished"


def test_unknown_phase_is_a_clear_error() -> None:
    runtime = make_runtime()
    with pytest.raises(ValueError, match="phase='flsh'"):
        runtime.on_shutdown(lambda: _noop(), phase="flsh")


async def _append(items: list[str], item: str) -> None:
    items.append(item)


async def _set(event: asyncio.Event) -> None:
    event.set()


async def _flush(runtime: Runtime, count: int) -> None:
    runtime.record_flushed(count)


async def _noop() -> None:
    pass


async def test_startup_step_registered_after_startup_is_a_clear_error() -> None:
    async with run_runtime(Config(handle_signals=False)) as runtime:
        with pytest.raises(HookError, match="after startup finished"):
            runtime.on_startup(_noop)
        runtime.on_shutdown(_noop, phase="close")  # shutdown hooks are fine at any time


async def test_drain_hooks_are_awaited_and_reported_even_when_nothing_is_in_flight() -> None:
    """1. a drain hook that takes a while (closing websockets, say); 2. stop with no work.

    Result: the hook finished and its outcome is in the report (it used to be cancelled at
    once, with hooks ok 0, failed 0, exit 0); a drain hook that raises gives exit code 4.
    """
    runtime = make_runtime()
    finished = asyncio.Event()

    @runtime.on_shutdown(phase="drain")
    async def say_goodbye() -> None:
        await asyncio.sleep(0.2)
        finished.set()

    @runtime.on_shutdown(phase="drain")
    async def broken() -> None:
        raise RuntimeError("websocket close failed")

    with capture_logs() as logs:
        async with run_runtime(runtime=runtime):
            pass
    assert finished.is_set()
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["hooks"]["ok"] == 1
    assert report["hooks"]["failed"] == 1
    assert [name.rsplit(".", 1)[-1] for name in report["failed_hooks"]] == ["broken"]
    assert runtime.exit_code == ExitCode.HOOK_FAILED


async def test_a_second_signal_reports_the_drain_hooks_it_cut() -> None:
    runtime = make_runtime(handle_signals=True, stop_timeout=30.0, repeat_window=0.0)
    hanging = asyncio.Event()

    @runtime.on_shutdown(phase="drain")
    async def slow_goodbye() -> None:
        hanging.set()
        await asyncio.sleep(3600)

    @runtime.on_shutdown(phase="drain")
    async def after() -> None:
        pass

    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD), run_runtime(runtime=runtime):
            runtime.create_task(asyncio.sleep(3600))
            signal.raise_signal(signal.SIGTERM)
            await hanging.wait()
            signal.raise_signal(signal.SIGTERM)
            await runtime.wait_stopped()
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["hooks"]["skipped"] == 2
    skipped = [e["hook"].rsplit(".", 1)[-1] for e in logs if e["event"] == "hook.skipped"]
    assert skipped == ["slow_goodbye", "after"]


async def test_plain_functions_are_hooks_too_and_a_non_callable_result_never_raises() -> None:
    """A careless user passes ``executor.shutdown`` or a lambda: it runs, the stop goes on."""
    runtime = make_runtime()
    calls: list[str] = []
    runtime.on_shutdown(lambda: calls.append("plain"), name="plain")
    runtime.on_shutdown(lambda: 1 / 0, name="divides")
    runtime.on_shutdown(lambda: _append(calls, "returned coroutine"), name="returns_coroutine")
    runtime.on_shutdown(lambda: calls.append("close"), phase="close", name="close")
    async with run_runtime(runtime=runtime):
        pass
    assert calls == ["plain", "returned coroutine", "close"]
    assert runtime.exit_code == ExitCode.HOOK_FAILED  # the division by zero, nothing else


async def test_a_hook_calling_sys_exit_does_not_end_the_stop() -> None:
    runtime = make_runtime()
    calls: list[str] = []

    @runtime.on_shutdown
    async def exits() -> None:
        raise SystemExit(3)

    runtime.on_shutdown(lambda: calls.append("close"), phase="close", name="close")
    async with run_runtime(runtime=runtime):
        pass
    assert calls == ["close"]
    assert runtime.exit_code == ExitCode.HOOK_FAILED


async def test_a_stop_during_startup_never_starts_main() -> None:
    """1. startup hangs; 2. stop. Result: startup is cut, main never runs, close hooks do."""
    runtime = make_runtime()
    started = asyncio.Event()
    calls: list[str] = []

    @runtime.on_startup
    async def connect() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def main(rt: Runtime) -> None:
        calls.append("main")

    runtime.on_shutdown(lambda: calls.append("close"), phase="close", name="close")
    serving = asyncio.ensure_future(runtime.serve(main))
    await started.wait()
    runtime.request_stop("signal SIGTERM")
    assert await asyncio.wait_for(serving, HANG_GUARD) == ExitCode.OK
    assert calls == ["close"]


async def test_a_server_added_by_main_after_the_stop_began_is_stopped_and_drained() -> None:
    calls: list[str] = []
    runtime = make_runtime()

    async def main(rt: Runtime) -> None:
        await rt.wait_stopping()
        await asyncio.sleep(0.05)  # past stop_accept: the listeners were closed already
        rt.add_drainable(TrackedServer(calls))

    async with run_runtime(runtime=runtime, main=main):
        runtime.request_stop()
    assert "stop_accepting" in calls
    assert runtime.exit_code == ExitCode.OK


async def test_handlers_reach_their_runtime_through_current_runtime() -> None:
    seen: list[Runtime] = []

    async def main(rt: Runtime) -> None:
        async def handler() -> None:
            seen.append(current_runtime())

        await asyncio.create_task(handler())

    async with run_runtime(Config(handle_signals=False), main=main) as runtime:
        pass
    assert seen == [runtime]
    with pytest.raises(RuntimeError, match="outside a running graceful runtime"):
        current_runtime()


async def test_a_hanging_flush_hook_leaves_close_its_share_of_the_budget() -> None:
    """1. a flush hook hangs (no timeout of its own); 2. a close hook comes after it.

    Result: the flush hook is cut before the exit deadline, the close hook still runs inside
    the budget, the report does not say overran (it used to: close ran after exit_at).
    """
    runtime = make_runtime(stop_timeout=2.0)
    closed = asyncio.Event()

    @runtime.on_shutdown
    async def hangs() -> None:
        await asyncio.sleep(3600)

    runtime.on_shutdown(lambda: _set(closed), phase="close", name="close")
    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD), run_runtime(runtime=runtime):
            pass
    assert closed.is_set()
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["overran"] is False
    assert report["hooks"]["timed_out"] == 1
    assert runtime.exit_code == ExitCode.HOOK_FAILED


@pytest.mark.parametrize("death", ["cancelled-future", "base-exception"])
async def test_a_main_that_dies_of_cancellation_or_a_base_exception_is_a_crash(death: str) -> None:
    """``main`` marks itself ready, then dies of a CancelledError its own code raised (awaiting
    a future someone cancelled) or of a BaseException subclass.

    Result: readiness turns off, ``service.crashed`` is logged, the stop runs, exit code 1 (it
    used to stay ready, log nothing and exit 0). Control: the cancel phase cancelling a looping
    main is not a crash (test_work_longer_than_the_budget_is_cancelled_and_flush_still_runs).
    """

    class Boom(BaseException):
        pass

    async def main(rt: Runtime) -> None:
        rt.mark_ready()
        if death == "cancelled-future":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        raise Boom("a library's own BaseException")

    runtime = make_runtime()
    with capture_logs() as logs:
        code = await asyncio.wait_for(runtime.serve(main), HANG_GUARD)
    assert code == ExitCode.ERROR
    assert not runtime.ready
    assert [e["event"] for e in logs].count("service.crashed") == 1


async def test_a_hook_registered_for_a_phase_that_already_ran_is_a_clear_error() -> None:
    runtime = make_runtime()
    errors: list[str] = []

    @runtime.on_shutdown
    async def flush() -> None:
        try:
            runtime.on_shutdown(_noop, phase="drain")
        except HookError as exc:
            errors.append(str(exc))
        runtime.on_shutdown(_noop, phase="close")  # still to come: fine

    async with run_runtime(runtime=runtime):
        pass
    assert len(errors) == 1
    assert "after that phase ran" in errors[0]


async def test_a_slow_storm_of_signals_stays_one_stop() -> None:
    """Five SIGTERMs 0.3 s apart with a 0.5 s repeat window: each is within the window of the
    one before, so none escalates (it used to count from the last *counted* signal, so the
    second one 0.6 s in skipped the drain)."""
    runtime = make_runtime(handle_signals=True, repeat_window=0.5)
    release = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD), run_runtime(runtime=runtime):
            job = runtime.create_task(release.wait())
            for _ in range(5):
                signal.raise_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
            release.set()
            await job
    assert "shutdown.escalated" not in [e["event"] for e in logs]
    assert runtime.exit_code == ExitCode.OK

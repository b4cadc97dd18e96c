"""The scenarios that signal the container directly (``docker kill``): SIGKILL under write
load, a storm of SIGTERMs, SIGINT; and whether ``docker stop`` sends a signal PID 1 handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from graceful.harness.container import signal_number_or_none, stop_signal_of
from graceful.harness.context import HANG_GUARD_S, Context, Findings, Service, gather_bounded
from graceful.harness.contract import Capability
from graceful.harness.judges import (
    judge_exit,
    judge_inflight,
    judge_report_events,
    judge_traceback,
    judge_writes,
    wait_signalled_exit,
)
from graceful.harness.load import Kind, Ledger
from graceful.harness.report import ScenarioResult
from graceful.runtime import ExitCode

__all__ = ["KillUnderLoad", "SignalStorm", "Signals", "writes_under_way"]


@contextlib.asynccontextmanager
async def writes_under_way(
    ctx: Context, service: Service, ledger: Ledger, writers: int, min_acked: int, max_wait: float
) -> AsyncIterator[None]:
    """Writers on ``service`` until ``min_acked`` writes are acknowledged (or ``max_wait`` s
    passed); they keep writing through the block, and are stopped and awaited after it.

    .. versionadded:: 0.1
    """
    async with ctx.client(service, ledger) as client:
        stop_load = asyncio.Event()
        load = asyncio.create_task(
            client.steady(
                stop=stop_load,
                concurrency=writers,
                writes=True,
                max_seconds=max_wait + HANG_GUARD_S,
            )
        )
        ctx.step(f"{writers} writers running")
        deadline = time.monotonic() + max_wait
        while len(ledger.acked_ids()) < min_acked and time.monotonic() < deadline:
            if load.done():
                break
            await asyncio.sleep(0.01)
        try:
            yield
        finally:
            stop_load.set()
            await gather_bounded([load])


@dataclass(frozen=True, slots=True, kw_only=True)
class KillUnderLoad:
    """``docker kill`` (SIGKILL) under write load: exit 137, and a new container on the same
    volume holds every acknowledged write.

    Args:
        writers: concurrent writers.
        min_acked: acknowledged writes to wait for before the kill.
        max_wait: the longest to wait for them, seconds.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "kill-under-load"
    summary: ClassVar[str] = (
        "docker kill (SIGKILL) under write load: exit 137, every acked write there after a restart"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.ITEMS})
    writers: int = 16
    min_acked: int = 30
    max_wait: float = 10.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        if not ctx.contract.has(Capability.ITEMS):
            f.skip(f"needs {ctx.contract.why_not(Capability.ITEMS)}")
            return f.result(self.name)
        service = await ctx.start()
        ledger = Ledger()
        async with writes_under_way(
            ctx, service, ledger, self.writers, self.min_acked, self.max_wait
        ):
            ctx.step("docker kill")
            started = time.monotonic()
            await ctx.kill(service, "SIGKILL")
            stop = await ctx.wait_exit(service, started, HANG_GUARD_S)
        if stop is None:
            f.problem("the container did not exit after SIGKILL")
        elif stop.exit_code != 137:
            f.problem(f"exited {stop.exit_code} after SIGKILL (expected 137)")
        lost = await judge_writes(f, ctx, service, ledger)
        if not ledger.acked_ids():
            f.problem("no write was acknowledged before the kill, so nothing could be checked")
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalStorm:
    """Many SIGTERMs at once (``docker kill --signal TERM``): the stop runs once and the
    container exits cleanly (0, or 5 for the documented forced exit on a third signal).

    Args:
        signals: how many SIGTERMs to send.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "signal-storm"
    summary: ClassVar[str] = "many SIGTERMs at once: one shutdown (one shutdown.report), clean exit"
    needs: ClassVar[frozenset[Capability]] = frozenset()
    signals: int = 5

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start()
        ctx.step(f"{self.signals} x docker kill --signal SIGTERM")
        started = time.monotonic()

        def storm() -> int:
            sent = 0
            for _ in range(self.signals):
                if not service.container.kill("SIGTERM"):
                    break
                sent += 1
            return sent

        sent = await asyncio.to_thread(storm)
        stop = await wait_signalled_exit(f, ctx, service, started, sig=f"{sent} x SIGTERM")
        if stop is None:
            return f.result(self.name)
        expected = (ExitCode.OK, ExitCode.FORCED)
        judge_exit(f, ctx, service, stop, sig="SIGTERM", expected=expected)
        if stop.exit_code == ExitCode.FORCED:
            f.note("exit 5: a repeated signal forced the exit, as the escalation ladder documents")
        logs = await ctx.logs(service)
        judge_report_events(f, logs, ctx.workload, strict=True)
        judge_traceback(f, logs)
        f.note(f"{sent} SIGTERMs delivered before the exit")
        return f.result(self.name, stop=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    """SIGINT behaves like SIGTERM (in-flight answered, exit 0), and the image's configured
    ``STOPSIGNAL`` (what ``docker stop`` sends) is handled.

    Args:
        inflight: requests in flight when SIGINT arrives.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "signals"
    summary: ClassVar[str] = (
        "SIGINT behaves like SIGTERM; the image's STOPSIGNAL is what docker stop sends, and it "
        "is handled"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset()
    wants: ClassVar[frozenset[Capability]] = frozenset({Capability.LONG_WORK})
    inflight: int = 2

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        ledger = Ledger()
        # 1. SIGINT with requests in flight (when the image holds them for the time asked).
        service = await ctx.start()
        work_ms = ctx.workload.long_ms(min(int(ctx.stop_timeout * 300), 2000))
        inflight = self.inflight if ctx.contract.has(Capability.LONG_WORK) else 0
        async with ctx.client(service, ledger, timeout=ctx.stop_timeout + HANG_GUARD_S) as client:
            longs = [
                asyncio.create_task(client.work(work_ms, kind=Kind.LONG)) for _ in range(inflight)
            ]
            await client.settle()
            ctx.step("docker kill --signal SIGINT")
            started = time.monotonic()
            await ctx.kill(service, "SIGINT")
            stop = await wait_signalled_exit(
                f, ctx, service, started, sig="SIGINT", prefix="SIGINT: "
            )
            await gather_bounded(longs)
        if stop is not None:
            judge_exit(f, ctx, service, stop, sig="SIGINT", prefix="SIGINT: ")
            judge_inflight(f, ledger, started, prefix="SIGINT: ", require=bool(inflight))
            judge_traceback(f, await ctx.logs(service))
        # 2. docker stop sends the configured STOPSIGNAL.
        service = await ctx.start()
        sig = stop_signal_of(service.container, ctx.image)
        number = signal_number_or_none(sig)
        pid1 = service.pid1
        if pid1 is not None and number is not None and pid1.handles(number) is False:
            f.problem(
                f"{sig} (STOPSIGNAL): PID 1 ({pid1.cmdline}) installs no {sig} handler, so "
                "docker stop's signal is not handled"
            )
        stop2 = await ctx.stop(service)
        judge_exit(f, ctx, service, stop2, sig=sig, prefix=f"{sig} (STOPSIGNAL): ")
        f.note(f"docker stop sends {sig} (the image's STOPSIGNAL)")
        return f.result(self.name, stop=stop2, ledger=ledger)

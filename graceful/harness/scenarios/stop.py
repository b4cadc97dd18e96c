"""The ``docker stop`` scenarios: with nothing in flight, under load, with work longer than
the budget, and right after start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar

from graceful.harness.container import (
    signal_number_or_none,
    stop_signal_of,
)
from graceful.harness.context import HANG_GUARD_S, Context, Findings, gather_bounded
from graceful.harness.contract import Capability
from graceful.harness.durability import READ_ERRORS, judge_writes, read_back
from graceful.harness.judges import (
    judge_connections,
    judge_exit,
    judge_inflight,
    judge_long_inflight,
    judge_report_events,
    judge_traceback,
)
from graceful.harness.load import Kind, Ledger, describe_failures
from graceful.harness.prober import Prober
from graceful.harness.report import ScenarioResult
from graceful.harness.work_done import judge_work_done
from graceful.status import ExitCode

__all__ = ["StopDuringStartup", "StopIdle", "StopOverBudget", "StopUnderLoad"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StopIdle:
    """``docker stop`` with nothing in flight: exit 0, fast.

    Args:
        idle_limit: seconds an idle stop may take.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-idle"
    summary: ClassVar[str] = "docker stop with nothing in flight: exit 0, well before the timeout"
    needs: ClassVar[frozenset[Capability]] = frozenset()
    idle_limit: float = 2.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start()
        stop = await ctx.stop(service)
        judge_exit(f, ctx, service, stop)
        if stop.exit_code == 0 and stop.seconds > self.idle_limit:
            f.problem(
                f"an idle stop took {stop.seconds:.2f} s (over {self.idle_limit} s): something "
                "waits on a timer (a poll loop, a keep-alive timeout, a fixed delay)"
            )
        logs = await ctx.logs(service)
        judge_report_events(f, logs, ctx.workload, strict=True)
        judge_traceback(f, logs)
        return f.result(self.name, stop=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopUnderLoad:
    """``docker stop`` under steady load with long requests in flight: every accepted
    request answered, readiness 503 before the listener closes, new connections refused,
    exit 0 before the timeout, acknowledged writes kept.

    Args:
        concurrency: steady short requests in flight.
        work_ms: length of a steady request.
        writers: concurrent writers (0 for none).
        long_requests: long requests in flight when the stop begins (only when the image
            holds a request for the time asked: the preflight's ``long work``).
        long_ms: their length; by default 40 % of the stop timeout, at most 3 s (whole
            seconds for a ``{seconds}`` work URL).

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-under-load"
    summary: ClassVar[str] = (
        "docker stop under load with long requests in flight: all answered, /readyz 503 first, "
        "new connections refused, exit 0 in time, acked writes kept"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.WORK})
    wants: ClassVar[frozenset[Capability]] = frozenset({Capability.LONG_WORK, Capability.ITEMS})
    concurrency: int = 4
    work_ms: int = 20
    writers: int = 2
    long_requests: int = 8
    long_ms: int | None = None

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        w = ctx.workload
        long_ms = w.long_ms(self.long_ms or min(int(ctx.stop_timeout * 400), 3000))
        long_requests = self.long_requests if ctx.contract.has(Capability.LONG_WORK) else 0
        writers = self.writers if ctx.contract.has(Capability.ITEMS) else 0
        service = await ctx.start()
        ledger = Ledger()
        prober = await Prober.start(ctx, service)
        async with ctx.client(service, ledger, timeout=ctx.stop_timeout + HANG_GUARD_S) as client:
            stop_load = asyncio.Event()
            bound = ctx.stop_timeout + HANG_GUARD_S
            load = [
                asyncio.create_task(
                    client.steady(
                        stop=stop_load,
                        concurrency=self.concurrency,
                        ms=w.short_ms(self.work_ms),
                        max_seconds=bound,
                    )
                )
            ]
            if writers:
                load.append(
                    asyncio.create_task(
                        client.steady(
                            stop=stop_load,
                            concurrency=writers,
                            writes=True,
                            max_seconds=bound,
                        )
                    )
                )
            ctx.step(f"load running, {long_requests} requests of {long_ms} ms in flight")
            await asyncio.sleep(0.3)
            longs = [
                asyncio.create_task(client.work(long_ms, kind=Kind.LONG))
                for _ in range(long_requests)
            ]
            await client.settle()
            stop_began, stop_began_wall = time.monotonic(), time.time()
            stop_load.set()
            stop = await ctx.stop(service)
            exited = stop.exited_at(stop_began, stop_began_wall)
            await gather_bounded(load + longs)
        events = await prober.finish()
        judge_exit(f, ctx, service, stop)
        judge_inflight(f, ledger, stop_began)
        judge_work_done(f, ledger, stop_began=stop_began)
        if not long_requests:
            why = ctx.contract.why_not(Capability.LONG_WORK)
            f.note(f"no long requests were held across the stop ({why})")
        judge_connections(
            f,
            events,
            stop_began=stop_began,
            exited=exited,
            where=prober.where,
            check_ready=w.has_admin,
            ready_on=w.ready_on,
        )
        logs = await ctx.logs(service)
        judge_report_events(f, logs, w, strict=True)
        judge_traceback(f, logs)
        lost = await judge_writes(f, ctx, service, ledger)
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopOverBudget:
    """``docker stop`` with requests longer than the stop timeout: the work is cut, state is
    still flushed, and the container exits by itself before SIGKILL.

    Args:
        long_requests: requests in flight that cannot finish in time.
        over_s: how much longer than the stop timeout they ask for.
        writes: writes acknowledged before the stop (checked after a restart).

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-over-budget"
    summary: ClassVar[str] = (
        "docker stop with requests longer than the timeout: work cut, state flushed, "
        "exit before SIGKILL (not 137)"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.LONG_WORK})
    wants: ClassVar[frozenset[Capability]] = frozenset({Capability.ITEMS})
    long_requests: int = 4
    over_s: int = 5
    writes: int = 20

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        w = ctx.workload
        long_ms = w.long_ms((ctx.stop_timeout + self.over_s) * 1000)
        service = await ctx.start()
        ledger = Ledger()
        guard = ctx.stop_timeout + self.over_s + HANG_GUARD_S
        async with ctx.client(service, ledger, timeout=guard) as client:
            if ctx.contract.has(Capability.ITEMS):
                await asyncio.gather(*(client.write() for _ in range(self.writes)))
            ctx.step(f"{self.long_requests} requests of {long_ms / 1000:g} s in flight")
            longs = [
                asyncio.create_task(client.work(long_ms, kind=Kind.LONG))
                for _ in range(self.long_requests)
            ]
            await client.settle()
            stop_began = time.monotonic()
            stop = await ctx.stop(service)
            await gather_bounded(longs)
        judge_exit(f, ctx, service, stop, expected=(ExitCode.OK, ExitCode.WORK_CUT))
        held = judge_long_inflight(
            f, ledger, stop_began, asked_ms=long_ms, target=w.work_target(long_ms)
        )
        judge_work_done(f, ledger, stop_began=stop_began)
        cut = [r for r in held if not r.ok]
        if cut:
            f.note(f"{len(cut)} requests longer than the budget were cut: {describe_failures(cut)}")
            if stop.exit_code == ExitCode.OK:
                f.note(
                    "exited 0 although in-flight work was cut (graceful's contract uses "
                    f"{ExitCode.WORK_CUT:d})"
                )
        logs = await ctx.logs(service)
        judge_report_events(f, logs, w, strict=True)
        judge_traceback(f, logs, fail=False)
        lost = await judge_writes(f, ctx, service, ledger)
        # The long requests cut at the deadline are what this scenario asks for: counted as
        # failed (the JSON's shape) and shown as expected.
        result = f.result(self.name, stop=stop, ledger=ledger, lost=lost)
        return dataclasses.replace(result, expected_cut=len(cut))


@dataclass(frozen=True, slots=True, kw_only=True)
class StopDuringStartup:
    """``docker stop`` right after start (as soon as PID 1 handles the stop signal, where the
    engine lets the harness see that): clean exit, and a new container on the same volume
    starts and serves its items.

    Args:
        handler_wait: the longest to wait for PID 1's handler before stopping anyway.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-during-startup"
    summary: ClassVar[str] = (
        "docker stop right after start: exit 0, and the state still opens after a restart"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset()
    wants: ClassVar[frozenset[Capability]] = frozenset({Capability.ITEMS})
    handler_wait: float = 5.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start(ready=False)
        sig = stop_signal_of(service.container, ctx.image)
        number = signal_number_or_none(sig)
        if number is not None:
            service.pid1 = await asyncio.to_thread(
                service.container.wait_handler, number, self.handler_wait
            )
        stop = await ctx.stop(service)
        judge_exit(f, ctx, service, stop, sig=sig)
        logs = await ctx.logs(service)
        judge_traceback(f, logs)
        if ctx.contract.has(Capability.ITEMS):
            try:
                await read_back(ctx, service.volume, [])
            except READ_ERRORS as exc:
                f.problem(
                    "after a stop during startup, a new container on the same volume did not "
                    f"serve its items: {exc}"
                )
            else:
                f.note("a new container on the same volume started and served its items")
        return f.result(self.name, stop=stop)

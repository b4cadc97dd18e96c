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

from graceful.harness.container import (
    ContainerError,
    StopResult,
    signal_number_or_none,
    stop_signal_of,
)
from graceful.harness.context import HANG_GUARD_S, Context, Findings, Service, gather_bounded
from graceful.harness.contract import Capability
from graceful.harness.durability import check_writes
from graceful.harness.judges import (
    judge_exit,
    judge_inflight,
    judge_report_events,
    judge_traceback,
    wait_signalled_exit,
)
from graceful.harness.load import Kind, Ledger
from graceful.harness.report import ScenarioResult
from graceful.harness.work_done import judge_work_done
from graceful.status import ExitCode

__all__ = ["KillUnderLoad", "SignalStorm", "Signals", "judge_kills", "writes_under_way"]


@contextlib.asynccontextmanager
async def writes_under_way(
    ctx: Context,
    service: Service,
    ledger: Ledger,
    writers: int,
    min_acked: int,
    max_wait: float,
    *,
    id_suffix: str = "",
) -> AsyncIterator[None]:
    """Writers on ``service`` until ``min_acked`` writes are acknowledged (or ``max_wait`` s
    passed); they keep writing through the block, and are stopped and awaited after it.

    ``id_suffix`` keeps the ids of successive calls on one ledger apart (each call's client
    counts from 1): a write lost in one round must not be written again, and found, in the
    next.

    .. versionadded:: 0.1
    """
    min_acked += len(ledger.acked_ids())  # this call's own, on a ledger that may hold others
    async with ctx.client(service, ledger) as client:
        client.id_prefix += id_suffix
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
    """``docker kill`` (SIGKILL) under write load, several times on one volume: exit 137 each
    time, and a new container on the volume holds every write acknowledged in any round.

    One kill is one sample: a service that acknowledges a write a moment before it is durable
    loses a write only when the kill lands in that moment, and passed a single kill in about
    one run of three. Each round starts a container on the same volume, writes until
    ``min_acked`` more are acknowledged, and kills it; the ledger spans every round. For many
    more samples, under steady load, run ``graceful harness soak --faults kill``.

    Args:
        writers: concurrent writers.
        min_acked: acknowledged writes to wait for before each kill.
        max_wait: the longest to wait for them in each round, seconds.
        rounds: kills, each in a new container on the same volume.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       Several kills (``rounds``), not one.
    """

    name: ClassVar[str] = "kill-under-load"
    summary: ClassVar[str] = (
        "docker kill (SIGKILL) under write load, 3 times on one volume: exit 137, every acked "
        "write there after a restart"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.ITEMS})
    writers: int = 16
    min_acked: int = 30
    max_wait: float = 10.0
    rounds: int = 3

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        if not ctx.contract.has(Capability.ITEMS):
            f.skip(f"needs {ctx.contract.why_not(Capability.ITEMS)}")
            return f.result(self.name)
        ledger = Ledger()
        service = await ctx.start()
        stop: StopResult | None = None
        kills = 0
        for n in range(1, self.rounds + 1):
            if n > 1:
                what = f"a container on the same volume (kill {n} of {self.rounds})"
                try:
                    service = await ctx.start(service.volume, what=what)
                except ContainerError as exc:
                    f.problem(
                        f"after kill {n - 1} of {self.rounds}, a new container on the same "
                        f"volume did not come up: {exc}"
                    )
                    return f.result(self.name, stop=stop, ledger=ledger)
            async with writes_under_way(
                ctx, service, ledger, self.writers, self.min_acked, self.max_wait,
                id_suffix=f"-k{n}",
            ):  # fmt: skip
                ctx.step(f"docker kill ({n} of {self.rounds})")
                started = time.monotonic()
                await ctx.kill(service, "SIGKILL")
                stop = await ctx.wait_exit(service, started, HANG_GUARD_S)
            kills += 1
            if stop is None:
                f.problem(f"kill {n} of {self.rounds}: the container did not exit after SIGKILL")
                break
            if stop.exit_code != 137:
                f.problem(
                    f"kill {n} of {self.rounds}: exited {stop.exit_code} after SIGKILL "
                    "(expected 137)"
                )
        lost = await judge_kills(f, ctx, service, ledger, kills)
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


async def judge_kills(
    f: Findings, ctx: Context, service: Service, ledger: Ledger, kills: int
) -> int:
    """The acknowledged writes after ``kills`` SIGKILLs, read back on the same volume; what
    the verdict rests on is noted only when they could be checked. Returns the loss."""
    lost = await check_writes(f, ctx, service, ledger)
    if not ledger.acked_ids():
        f.problem("no write was acknowledged before the kills, so nothing could be checked")
    if lost is None:  # not read back: "lost nothing" would claim what was never checked
        return 0
    f.note(_sampled(kills, lost))
    return lost


def _sampled(kills: int, lost: int) -> str:
    """What the verdict rests on: how many kills it sampled."""
    what = f"{kills} SIGKILL{'' if kills == 1 else 's'} under write load on one volume"
    if lost:
        return f"{what} (the lost ids name their kill: -k1-, -k2-, ...)"
    return (
        f"{what} lost nothing; a loss that needs the kill to land in a short window can still "
        "pass a few samples: `graceful harness soak --faults kill` takes many more"
    )


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
            if longs:  # no work endpoint: nothing to settle, and no request of ours to judge
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
            judge_work_done(f, ledger, stop_began=started, prefix="SIGINT: ")
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

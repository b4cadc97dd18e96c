"""The ``rolling-restart`` scenario: replace every replica behind a load balancer under load.

N replicas of the image run behind HAProxy (:mod:`graceful.harness.cluster` sets them up). The
roll is Kubernetes' ``maxSurge 1, maxUnavailable 0``: start a new replica, wait until the load
balancer has it ``UP``, ``docker stop`` an old one and wait for its exit; again for every
replica, ``rolls`` times over.

The scenario passes when no request of those rolls failed and every stopped replica exited 0.
Before them it runs one control roll whose old replicas have ``GRACEFUL_DELAY=0``: they close
their listeners while the load balancer still routes to them, and the requests that fail then
are reported beside the judged rolls' (as notes), to show what the propagation delay buys.
``docs/rolling-restart.md`` explains every step.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from graceful.harness.cluster import (
    LB_IMAGE,
    Cluster,
    Detection,
    Replacement,
    lb_config,
    lb_config_file,
    lb_detection,
    parse_httplog,
)
from graceful.harness.container import StopResult
from graceful.harness.context import HANG_GUARD_S, Context, Findings
from graceful.harness.contract import Capability
from graceful.harness.judges import describe_exit, judge_report_events, judge_traceback
from graceful.harness.load import Ledger, Record, describe_failures
from graceful.harness.report import ScenarioResult
from graceful.harness.steady import split_by_roll, steady_load

__all__ = ["Roll", "RollingRestart"]

# The most requests the load sends in one scenario run (a bound, never reached in practice).
_MAX_REQUESTS = 250_000


@dataclass(slots=True)
class Roll:
    """A run of replacements with one delay (the control roll, or a judged one), and the
    requests sent while it ran.

    .. versionadded:: 0.1
    """

    delay: float
    control: bool
    started: float
    started_wall: float
    # Wall-clock bounds of the requests counted with this roll (the load balancer's log is
    # stamped with the wall clock); set once every roll has run.
    window: tuple[float, float] = (0.0, 0.0)
    replacements: list[Replacement] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)


@dataclass(frozen=True, slots=True, kw_only=True)
class RollingRestart:
    """Replace every replica behind a load balancer under steady load, ``rolls`` times over:
    no request may fail, and every stopped replica must exit 0.

    Needs the load-balancer image (``graceful-lb:bookworm``, built by ``docker/build.sh``),
    an admin port with readiness, and an image that keeps serving for a propagation delay
    after ``/readyz`` turns 503 (graceful's ``GRACEFUL_DELAY``, which the scenario sets). That
    is why it runs only when named (``--scenario rolling-restart``).

    Args:
        replicas: replicas behind the load balancer.
        rolls: full rolls judged (each replaces every replica once).
        delay: ``GRACEFUL_DELAY`` of the judged replicas; must exceed the load balancer's
            detection time (``inter x fall + timeout check`` of its configuration, 1.5 s).
        control: first roll once with ``GRACEFUL_DELAY=0`` and report the difference (notes
            only: the control run never fails the scenario).
        concurrency: requests in flight at once through the load balancer.
        work_ms: the work each request asks for.
        lb_image: the HAProxy image.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "rolling-restart"
    opt_in: ClassVar[bool] = True
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.WORK, Capability.ADMIN_READY})
    summary: ClassVar[str] = (
        "opt-in: replace N replicas one at a time behind HAProxy under load (needs "
        "graceful-lb:bookworm): no request fails, every replica exits 0; also shows "
        "GRACEFUL_DELAY=0 losing requests"
    )
    replicas: int = 3
    rolls: int = 1
    delay: float = 2.0
    control: bool = True
    concurrency: int = 8
    work_ms: int = 20
    lb_image: str = LB_IMAGE

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.rolls < 1 or self.concurrency < 1:
            raise ValueError("replicas, rolls and concurrency must be at least 1")
        if self.delay < 0 or self.work_ms < 0:
            raise ValueError("delay and work_ms must not be negative")

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        if not ctx.contract.has(Capability.ADMIN_READY):
            f.skip(
                "a load balancer routes by readiness, and the image has no admin port with a "
                f"readiness path ({ctx.contract.why_not(Capability.ADMIN_READY)})"
            )
            return f.result(self.name)
        detection = lb_detection(lb_config())
        # Slots for the surge replica and for an exited one's address, held for a second.
        cluster = Cluster(ctx, lb_image=self.lb_image, slots=self.replicas + 2)
        try:
            with lb_config_file() as config:
                await cluster.open(config)
                rolls = await self._roll(ctx, cluster)
            lb_logs = await cluster.lb_logs()
        finally:
            await cluster.close()
        judged = [r for r in rolls if not r.control]
        control = next((r for r in rolls if r.control), None)
        self._judge(f, ctx, judged, control, detection, lb_logs)
        main = Ledger([r for p in judged for r in p.ledger.records])
        stops = [r.stop for p in judged for r in p.replacements]
        return f.result(self.name, stop=_headline(stops), ledger=main)

    async def _roll(self, ctx: Context, cluster: Cluster) -> list[Roll]:
        """Start the replicas, put load on the load balancer, run the control roll and the
        judged rolls; return each roll with the requests sent while it ran."""
        # The control roll stops replicas started with no delay; every new one gets the delay.
        old_delays = ([0.0] if self.control else []) + [self.delay] * self.rolls
        ctx.step(f"starting {self.replicas} replicas")
        replicas = list(
            await asyncio.gather(
                *(cluster.start_replica(old_delays[0]) for _ in range(self.replicas))
            )
        )
        for replica in replicas:
            await cluster.wait_status(replica, up=True, what="an initial replica")
        ledger = Ledger()
        # Hang guard only: a replacement normally takes a few seconds.
        bound = (
            len(old_delays)
            * self.replicas
            * (ctx.settings.startup_timeout + ctx.stop_timeout + HANG_GUARD_S)
        )
        rolls: list[Roll] = []
        async with steady_load(
            ctx,
            cluster.app_port,
            ledger,
            concurrency=self.concurrency,
            work_ms=self.work_ms,
            timeout=ctx.stop_timeout + HANG_GUARD_S,
            max_requests=_MAX_REQUESTS,
            max_seconds=bound,
        ):
            for number, old_delay in enumerate(old_delays):
                is_control = self.control and number == 0
                roll = Roll(
                    delay=old_delay,
                    control=is_control,
                    started=time.monotonic(),
                    started_wall=time.time(),
                )
                what = "control roll" if is_control else f"roll {number + 1 - self.control}"
                for index in range(self.replicas):
                    ctx.step(
                        f"{what} (GRACEFUL_DELAY={old_delay:g}): replica {index + 1} of "
                        f"{self.replicas}"
                    )
                    new, done = await cluster.replace(replicas[0], self.delay)
                    replicas = [*replicas[1:], new]
                    roll.replacements.append(done)
                rolls.append(roll)
        split_by_roll(ledger, rolls)
        return rolls

    def _judge(
        self,
        f: Findings,
        ctx: Context,
        judged: Sequence[Roll],
        control: Roll | None,
        detection: Detection,
        lb_logs: str,
    ) -> None:
        records = [r for p in judged for r in p.ledger.records]
        replacements = [r for p in judged for r in p.replacements]
        failed = [r for r in records if not r.ok]
        if not records:
            f.problem("no request was sent through the load balancer during the judged rolls")
        rolls = f"{len(judged)} roll{'s' * (len(judged) != 1)} ({len(replacements)} replacements"
        rolls += f" of {self.replicas} replicas, GRACEFUL_DELAY={self.delay:g} s)"
        if failed:
            stopping = sum(1 for r in failed if _while_stopping(r, replacements, detection))
            f.problem(
                f"{len(failed)} of {len(records)} requests through the load balancer failed "
                f"during {rolls}: {describe_failures(failed)}{_lb_states(lb_logs, judged)}; "
                f"{stopping} of them were sent while an old replica was stopping"
                + _cause(self.delay, detection, stopping, len(failed))
            )
        else:
            f.note(
                f"all {len(records)} requests through the load balancer were answered during "
                f"{rolls}"
            )
        _judge_exits(f, replacements, problem=True)
        for done in replacements:
            judge_report_events(f, done.logs, ctx.workload, strict=False)
            judge_traceback(f, done.logs)
        # One finding per kind of problem, not one per replica.
        f.problems[:] = dict.fromkeys(f.problems)
        if self.delay > detection.seconds:
            f.note(
                f"GRACEFUL_DELAY={self.delay:g} s outlasts the load balancer's detection time "
                f"({detection.describe()})"
            )
        else:
            f.note(
                f"GRACEFUL_DELAY={self.delay:g} s does not outlast the load balancer's detection "
                f"time ({detection.describe()}): requests routed before it noticed can fail"
            )
        if control is not None:
            self._judge_control(f, control, len(failed), len(records), len(replacements), lb_logs)

    def _judge_control(
        self,
        f: Findings,
        control: Roll,
        failed: int,
        sent: int,
        replacements: int,
        lb_logs: str,
    ) -> None:
        """The control roll only ever adds notes: it demonstrates, it does not judge."""
        records = control.ledger.records
        lost = [r for r in records if not r.ok]
        steps = len(control.replacements)
        judged = f"with GRACEFUL_DELAY={self.delay:g} s: {failed} of {sent} failed during "
        judged += f"{replacements} replacements"
        if lost:
            f.note(
                f"with GRACEFUL_DELAY=0: {len(lost)} of {len(records)} requests failed during "
                f"{steps} replacements ({describe_failures(lost)}"
                f"{_lb_states(lb_logs, [control], inner=True)}); {judged}"
            )
        else:
            f.note(
                f"with GRACEFUL_DELAY=0 no request failed either (0 of {len(records)} during "
                f"{steps} replacements), so this run could not show what the delay buys: the "
                "load balancer noticed each stop before the listener closed, or the load was "
                f"too light; {judged}"
            )
        _judge_exits(f, control.replacements, problem=False, prefix="with GRACEFUL_DELAY=0: ")


def _judge_exits(
    f: Findings, replacements: Sequence[Replacement], *, problem: bool, prefix: str = ""
) -> None:
    """Every stopped replica must exit 0; say how long the stops took and whether the load
    balancer had taken each old replica out of rotation before it exited."""
    if not replacements:
        return
    bad = [r for r in replacements if r.stop.exit_code != 0]
    by_code: dict[int, list[Replacement]] = {}
    for r in bad:
        by_code.setdefault(r.stop.exit_code, []).append(r)
    for code, group in by_code.items():
        text = (
            f"{prefix}{len(group)} of {len(replacements)} stopped replicas exited {code} "
            f"({group[0].old}: {describe_exit(code, group[0].stop)})"
        )
        if problem:
            f.problem(text)
        else:
            f.note(text)
    seconds = [r.stop.seconds for r in replacements]
    exits = "exited 0" if not bad else f"{len(replacements) - len(bad)} exited 0"
    known = [r.down_before_exit for r in replacements if r.down_before_exit is not None]
    out = ""
    if known:
        out = (
            f"; the load balancer had taken {sum(known)} of {len(known)} out of rotation before "
            "they exited"
        )
    f.note(
        f"{prefix}{'all ' if not bad else ''}{len(replacements)} stopped replicas: {exits}, "
        f"{min(seconds):.2f}-{max(seconds):.2f} s from docker stop to exit{out}"
    )


def _headline(stops: Sequence[StopResult]) -> StopResult | None:
    """The stop the report's row shows: the first that did not exit 0, else the slowest."""
    if not stops:
        return None
    bad = [s for s in stops if s.exit_code != 0]
    return bad[0] if bad else max(stops, key=lambda s: s.seconds)


def _while_stopping(
    record: Record, replacements: Sequence[Replacement], detection: Detection
) -> bool:
    """The request was sent between a ``docker stop`` and the load balancer's last chance
    to notice that replica's exit."""
    return any(
        r.stop_sent <= record.sent <= r.stop_sent + r.stop.seconds + detection.seconds
        for r in replacements
    )


def _cause(delay: float, detection: Detection, stopping: int, failed: int) -> str:
    if stopping * 2 < failed:
        return (
            " (most came outside any stop: while a new replica joined, or from the steady "
            "state; the load balancer's log says which replica broke them)"
        )
    if delay <= detection.seconds:
        return (
            f" (GRACEFUL_DELAY={delay:g} s does not outlast the load balancer's detection "
            f"time, {detection.seconds:g} s)"
        )
    return (
        ": the replicas stopped serving before the load balancer took them out of rotation; "
        "does the image answer /readyz 503 at once, and keep serving through GRACEFUL_DELAY?"
    )


def _lb_states(lb_logs: str, rolls: Sequence[Roll], *, inner: bool = False) -> str:
    """``; load balancer: 12 x 503 SC--`` for the failed requests the load balancer logged
    during ``rolls`` (``httplog`` lines are stamped with the wall clock)."""
    counter: Counter[str] = Counter()
    for when, status, state in parse_httplog(lb_logs):
        if status.startswith("2"):
            continue
        if any(r.window[0] <= when < r.window[1] for r in rolls):
            counter[f"{status} {state}"] += 1
    if not counter:
        return ""
    states = ", ".join(f"{n} x {what}" for what, n in counter.most_common())
    return f"{'; ' if inner else ' ('}load balancer: {states}{'' if inner else ')'}"

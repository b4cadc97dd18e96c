"""The verdict of the ``swarm-update`` scenario, and what its rolls measured.

:class:`SwarmOutcome` holds everything a run measured (also for ``bench/bench_swarm.py``);
:func:`judge` turns it into findings: every request answered, every replaced task exited 0
(as Swarm recorded it), every update ``completed``, the engine left as it was found. Each
roll gets a note with its requests and each task's stop time; the profile's note says which
balancer settings ran and the smallest ``GRACEFUL_DELAY`` they need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from graceful.harness.cluster import parse_httplog
from graceful.harness.container import StopResult
from graceful.harness.context import Context, Findings
from graceful.harness.contract import Capability
from graceful.harness.judges import judge_report_events, judge_traceback
from graceful.harness.load import Ledger, describe_failures
from graceful.harness.swarm_events import StoppedTask
from graceful.harness.swarm_profile import LbProfile

__all__ = [
    "SwarmOutcome",
    "SwarmRoll",
    "delay_words",
    "headline",
    "judge",
    "states_of",
    "task_stop",
]


@dataclass(slots=True)
class SwarmRoll:
    """One ``docker service update`` under load, and what it did.

    .. versionadded:: 0.1
    """

    kind: str
    started: float
    started_wall: float
    state: str = ""
    error: str = ""
    seconds: float = 0.0
    stopped: list[StoppedTask] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    window: tuple[float, float] = (0.0, 0.0)


@dataclass(slots=True)
class SwarmOutcome:
    """Everything a run measured, for the judge and for ``bench/bench_swarm.py``.

    .. versionadded:: 0.1
    """

    profile: LbProfile
    delay: float
    stop_timeout: int
    rolls: list[SwarmRoll] = field(default_factory=list)
    lb_logs: str = ""
    left: list[str] = field(default_factory=list)
    #: Why the engine could not be used (a swarm with someone else's services, an unusable
    #: lock): the scenario did not run, "" when it did.
    refused: str = ""


def judge(f: Findings, ctx: Context, outcome: SwarmOutcome) -> None:
    """Turn what :meth:`~graceful.harness.scenarios.swarm.SwarmUpdate.measure` saw into
    findings.

    .. versionadded:: 0.1
    """
    records = [r for roll in outcome.rolls for r in roll.ledger.records]
    failed = [r for r in records if not r.ok]
    profile = outcome.profile
    what = f"{len(outcome.rolls)} rolls ({', '.join(r.kind for r in outcome.rolls)})"
    if not records:
        f.problem("no request was sent through the load balancer during the rolls")
    elif failed:
        f.problem(
            f"{len(failed)} of {len(records)} requests through the load balancer failed "
            f"during {what}: {describe_failures(failed)}"
            f"{_lb_states(outcome.lb_logs, outcome.rolls)}" + _cause(outcome.delay, profile)
        )
    else:
        f.note(f"all {len(records)} requests through the load balancer were answered during {what}")
    for number, roll in enumerate(outcome.rolls, 1):
        if roll.error:
            f.problem(f"roll {number} ({roll.kind}) could not finish: {roll.error}")
        elif roll.state != "completed":
            f.problem(
                f"roll {number} ({roll.kind}): the update ended {roll.state!r}, not 'completed'"
            )
        for task in roll.stopped:
            if task.state in ("complete", "failed"):
                # Swarm stops a task it replaces (state shutdown); this one ended by itself.
                f.problem(
                    f"a task (slot {task.slot}, {task.task[:12]}) ended while nothing asked it "
                    f"to (Swarm's state: {task.state}, exit {task.exit_code}): it crashed, or "
                    "Swarm stopped it as unhealthy"
                )
            if task.exit_code != 0:
                code = "no exit code" if task.exit_code is None else f"exit {task.exit_code}"
                f.problem(
                    f"a replaced task (slot {task.slot}, {task.task[:12]}) ended with {code} "
                    f"(Swarm's state: {task.state})"
                )
            judge_report_events(f, task.logs, ctx.workload, strict=False)
            judge_traceback(f, task.logs)
        f.note(_roll_line(number, roll))
    f.problems[:] = dict.fromkeys(f.problems)
    f.note(
        f"load balancer profile {profile.describe()}: {profile.arithmetic()}; the tasks ran "
        f"with {delay_words(ctx, outcome.delay)} and a stop timeout (stop-grace-period) "
        f"of {outcome.stop_timeout} s"
    )
    if outcome.stop_timeout != ctx.stop_timeout:
        f.note(
            f"the stop timeout was raised from {ctx.stop_timeout} s to "
            f"{outcome.stop_timeout} s so that GRACEFUL_DELAY={outcome.delay:g} s leaves "
            "time to drain"
        )
    if outcome.left:
        f.problem(f"the engine was not left as it was found: {'; '.join(outcome.left)}")
    else:
        f.note("the engine's swarm state, services and networks are as they were before")


def delay_words(ctx: Context, delay: float) -> str:
    """``GRACEFUL_DELAY=8 s``, said as an environment variable the image may ignore when the
    preflight did not find graceful's /readyz (a plain uvicorn image has no delay at all)."""
    if ctx.contract.has(Capability.ADMIN_READY):
        return f"GRACEFUL_DELAY={delay:g} s"
    return (
        f"GRACEFUL_DELAY={delay:g} s in their environment (only graceful reads it: the "
        "preflight found no graceful /readyz, so the image may ignore it and stop at once)"
    )


def task_stop(task: StoppedTask) -> StopResult:
    """A replaced task's end as a :class:`StopResult` (exit -1 when none was recorded)."""
    code = -1 if task.exit_code is None else task.exit_code
    return StopResult(exit_code=code, seconds=task.stop_seconds or 0.0)


def headline(stops: Sequence[StopResult]) -> StopResult | None:
    """The stop the report's row shows: the first that did not exit 0, else the slowest."""
    if not stops:
        return None
    bad = [s for s in stops if s.exit_code != 0]
    return bad[0] if bad else max(stops, key=lambda s: s.seconds)


def _roll_line(number: int, roll: SwarmRoll) -> str:
    counts = roll.ledger.counts()
    stops = ", ".join(
        f"{t.stop_seconds:.1f}" if t.stop_seconds is not None else "?" for t in roll.stopped
    )
    codes = sorted({str(t.exit_code) for t in roll.stopped})
    return (
        f"roll {number} ({roll.kind}, {roll.state or 'not run'} in {roll.seconds:.0f} s): "
        f"{counts.failed} of {counts.sent} requests failed; {len(roll.stopped)} tasks stopped "
        f"(exit {'/'.join(codes) or '-'}) in {stops or '-'} s from the stop signal to exit"
    )


def states_of(lb_logs: str, rolls: Sequence[SwarmRoll]) -> str:
    """``12 x 503 SC--, 1 x 502 SH--``: the failed requests the balancer logged during
    ``rolls`` (its ``httplog`` lines are stamped with the wall clock); "" when none."""
    counter: Counter[str] = Counter()
    for when, status, state in parse_httplog(lb_logs):
        if not status.startswith("2") and any(r.window[0] <= when < r.window[1] for r in rolls):
            counter[f"{status} {state}"] += 1
    return ", ".join(f"{n} x {w}" for w, n in counter.most_common())


def _lb_states(lb_logs: str, rolls: Sequence[SwarmRoll]) -> str:
    states = states_of(lb_logs, rolls)
    if not states:
        return ""
    # Two views of the same failures: the totals agree, the kinds need not. HAProxy logs the
    # 503 it meant to send; a client whose connection it closed at the same moment counts
    # "closed" (no answer read), see docs/swarm.md.
    return (
        f" (load balancer: {states}; its log counts 503 for requests the client may count as "
        "'closed', a connection closed before an answer: compare the totals)"
    )


def _cause(delay: float, profile: LbProfile) -> str:
    needed = profile.needed_delay()
    if delay < needed:
        return (
            f"; GRACEFUL_DELAY={delay:g} s is shorter than the {needed:g} s this balancer needs "
            f"({profile.arithmetic()})"
        )
    return (
        "; the tasks stopped serving before the balancer stopped routing to them: does the "
        "image keep serving through GRACEFUL_DELAY after the stop signal?"
    )

"""The registry of scenarios, and the loop that runs a list of them against one image.

Every scenario class is listed here once, in run order. A class with ``opt_in = True`` (such
as ``rolling-restart``, which needs a load-balancer image) runs only when named; the others
are the default set, :data:`SCENARIOS` (:func:`default_names` leaves out the ones a workload
cannot feed, such as ``stop-during-stream`` without a stream path).

A class names what it cannot run without in ``needs`` (a set of
:class:`~graceful.harness.contract.Capability`) and what it uses when it is there in
``wants``. :func:`run_scenarios` first runs the preflight for all of them, then runs each
scenario whose needs were established and reports the others as SKIPPED, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Protocol

import graceful.harness.scenarios.kill as kill
import graceful.harness.scenarios.power as power
import graceful.harness.scenarios.stop as stop
import graceful.harness.scenarios.stream as stream
import graceful.harness.scenarios.swarm as swarm
from graceful.exceptions import GracefulError
from graceful.harness.container import ImageInfo
from graceful.harness.context import Context, Findings, Progress, Settings
from graceful.harness.contract import Capability, Contract
from graceful.harness.durability import ReadBackError
from graceful.harness.engine import Engine
from graceful.harness.preflight import preflight
from graceful.harness.report import Report, ScenarioResult, Verdict
from graceful.harness.rolling import RollingRestart
from graceful.harness.workload import Workload

__all__ = [
    "SCENARIOS",
    "Scenario",
    "default_names",
    "make_scenarios",
    "opt_in_scenarios",
    "run_scenarios",
    "scenario_names",
]


class Scenario(Protocol):
    """A way to stop a container, and what must hold afterwards.

    A class may also set ``opt_in: ClassVar[bool] = True`` to run only when named, and
    ``wants: ClassVar[frozenset[Capability]]``: what it uses when the image offers it.

    .. versionadded:: 0.1
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[frozenset[Capability]]

    async def run(self, ctx: Context) -> ScenarioResult:
        """Run against ``ctx``'s image and judge the outcome."""
        ...


# Every scenario, in run order.
_REGISTRY: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        stop.StopIdle,
        stop.StopUnderLoad,
        stop.StopOverBudget,
        kill.KillUnderLoad,
        kill.SignalStorm,
        stop.StopDuringStartup,
        kill.Signals,
        stream.StopDuringStream,
        RollingRestart,
        swarm.SwarmUpdate,
        power.PowerLoss,
    )
}


def _opt_in(cls: type[Scenario]) -> bool:
    return bool(getattr(cls, "opt_in", False))


SCENARIOS: dict[str, type[Scenario]] = {
    name: cls for name, cls in _REGISTRY.items() if not _opt_in(cls)
}
"""The default scenarios, by name, in run order."""


def opt_in_scenarios() -> dict[str, type[Scenario]]:
    """Scenarios that run only when named: they need more than the image (a load balancer,
    FUSE and root on the host).

    .. versionadded:: 0.1
    """
    return {name: cls for name, cls in _REGISTRY.items() if _opt_in(cls)}


def scenario_names(*, opt_in: bool = False) -> list[str]:
    """Every default scenario's name, in run order; with ``opt_in``, then the opt-in ones.

    .. versionadded:: 0.1
    """
    return list(SCENARIOS) + (list(opt_in_scenarios()) if opt_in else [])


def default_names(workload: Workload) -> list[str]:
    """The default scenarios a run with ``workload`` should try: every one, except those
    that need a part of the contract the workload says is not there (a stream without a
    stream path). Needs the workload promises are checked by the preflight instead.

    .. versionadded:: 0.1
    """
    configured = Contract.assumed(workload)
    return [
        name
        for name, cls in SCENARIOS.items()
        if not configured.missing(cls.needs & {Capability.STREAM})
    ]


def needs_of(scenario: Scenario) -> frozenset[Capability]:
    """What ``scenario`` cannot run without.

    .. versionadded:: 0.1
    """
    return frozenset(getattr(scenario, "needs", frozenset()))


def wants_of(scenario: Scenario) -> frozenset[Capability]:
    """What ``scenario`` uses when the image offers it.

    .. versionadded:: 0.1
    """
    return frozenset(getattr(scenario, "wants", frozenset()))


def make_scenarios(names: Iterable[str]) -> list[Scenario]:
    """Default-configured scenarios by name (opt-in ones included).

    Raises:
        KeyError: an unknown name (the message lists the known ones).

    .. versionadded:: 0.1
    """
    out: list[Scenario] = []
    for name in names:
        if name not in _REGISTRY:
            raise KeyError(f"unknown scenario {name!r}; known: {', '.join(_REGISTRY)}")
        out.append(_REGISTRY[name]())
    return out


async def run_scenarios(
    engine: Engine,
    image: ImageInfo,
    scenarios: Sequence[Scenario],
    settings: Settings,
    *,
    progress: Progress | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    check_contract: bool = True,
) -> Report:
    """Run the preflight, then scenarios one after the other against an image.

    A scenario whose needs the preflight did not establish is SKIPPED with the reason. A
    scenario that cannot finish (the container never becomes ready, the engine errors) fails
    with a finding that says so; the next one still runs. When the preflight's container
    never becomes ready, no scenario runs and each fails with that finding. Each scenario's
    containers and volumes are removed when it ends.

    Args:
        engine: the connected engine.
        image: the image under test.
        scenarios: scenario instances, e.g. ``[StopIdle(), KillUnderLoad(writers=32)]``.
        settings: what they share.
        progress: called with a short status text as scenarios advance.
        on_result: called with each verdict as soon as it is known.
        check_contract: run the preflight; without it, what the workload's settings promise
            is assumed.

    .. versionadded:: 0.1
    """
    report = Report(image=image.ref)
    contract = Contract.assumed(settings.workload)
    failed_start = ""
    if check_contract:
        needs = frozenset().union(*(needs_of(s) | wants_of(s) for s in scenarios))
        try:
            contract = await preflight(engine, image, settings, needs, progress=progress)
            report.contract = contract.lines()
        except Exception as exc:  # the image is broken: say so once, for every scenario
            failed_start = _exception_text(exc)
            report.contract = [f"the image could not be checked: {failed_start}"]
    for scenario in scenarios:
        result = await _run_one(engine, image, scenario, settings, contract, failed_start, progress)
        report.scenarios.append(result)
        if on_result is not None:
            on_result(result)
    return report


async def _run_one(
    engine: Engine,
    image: ImageInfo,
    scenario: Scenario,
    settings: Settings,
    contract: Contract,
    failed_start: str,
    progress: Progress | None,
) -> ScenarioResult:
    if failed_start:
        # The full text (with the container's last log lines) is the report's, once.
        first = failed_start.splitlines()[0].removesuffix("; its last log lines:")
        return ScenarioResult(
            name=scenario.name,
            verdict=Verdict.FAIL,
            findings=(f"not run: the preflight could not start the image: {first}",),
        )
    missing = contract.missing(needs_of(scenario))
    if missing:
        f = Findings()
        for capability in missing:
            f.skip(f"needs {contract.why_not(capability)}")
        return f.result(scenario.name)
    ctx = Context(
        engine, image, settings, scenario=scenario.name, progress=progress, contract=contract
    )
    try:
        return await scenario.run(ctx)
    except Exception as exc:  # a broken image must not stop the other scenarios
        return ScenarioResult(
            name=scenario.name,
            verdict=Verdict.FAIL,
            findings=(f"the scenario could not finish: {_exception_text(exc)}",),
        )
    finally:
        await ctx.close()


def _exception_text(exc: BaseException) -> str:
    """The harness's own errors (a container that will not become ready, a read that
    failed) are written for the user: their message alone. Anything else keeps its class
    name, which may be all it says (a bare ``KeyError: 'ids'``)."""
    text = str(exc).strip()
    if text and isinstance(exc, GracefulError | ReadBackError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

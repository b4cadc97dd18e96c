"""The registry of scenarios, and the loop that runs a list of them against one image.

Every scenario class is listed here once, in run order. A class with ``opt_in = True`` (such
as ``rolling-restart``, which needs a load-balancer image) runs only when named; the others
are the default set, :data:`SCENARIOS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Protocol

import graceful.harness.scenarios.kill as kill
import graceful.harness.scenarios.stop as stop
from graceful.harness.container import ImageInfo
from graceful.harness.context import Context, Progress, Settings
from graceful.harness.engine import Engine
from graceful.harness.report import Report, ScenarioResult
from graceful.harness.rolling import RollingRestart

__all__ = [
    "SCENARIOS",
    "Scenario",
    "make_scenarios",
    "opt_in_scenarios",
    "run_scenarios",
    "scenario_names",
]


class Scenario(Protocol):
    """A way to stop a container, and what must hold afterwards.

    A class may also set ``opt_in: ClassVar[bool] = True`` to run only when named.

    .. versionadded:: 0.1
    """

    name: ClassVar[str]
    summary: ClassVar[str]

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
        RollingRestart,
    )
}


def _opt_in(cls: type[Scenario]) -> bool:
    return bool(getattr(cls, "opt_in", False))


SCENARIOS: dict[str, type[Scenario]] = {
    name: cls for name, cls in _REGISTRY.items() if not _opt_in(cls)
}
"""The default scenarios, by name, in run order."""


def opt_in_scenarios() -> dict[str, type[Scenario]]:
    """Scenarios that run only when named: they need more than the image (a load balancer).

    .. versionadded:: 0.1
    """
    return {name: cls for name, cls in _REGISTRY.items() if _opt_in(cls)}


def scenario_names(*, opt_in: bool = False) -> list[str]:
    """Every default scenario's name, in run order; with ``opt_in``, then the opt-in ones.

    .. versionadded:: 0.1
    """
    return list(SCENARIOS) + (list(opt_in_scenarios()) if opt_in else [])


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
) -> Report:
    """Run scenarios one after the other against an image.

    A scenario that cannot finish (the container never becomes ready, the engine errors)
    fails with a finding that says so; the next one still runs. Each scenario's containers
    and volumes are removed when it ends.

    Args:
        engine: the connected engine.
        image: the image under test.
        scenarios: scenario instances, e.g. ``[StopIdle(), KillUnderLoad(writers=32)]``.
        settings: what they share.
        progress: called with a short status text as scenarios advance.
        on_result: called with each verdict as soon as it is known.

    .. versionadded:: 0.1
    """
    report = Report(image=image.ref)
    for scenario in scenarios:
        ctx = Context(engine, image, settings, scenario=scenario.name, progress=progress)
        try:
            result = await scenario.run(ctx)
        except Exception as exc:  # a broken image must not stop the other scenarios
            result = ScenarioResult(
                name=scenario.name,
                passed=False,
                findings=(f"the scenario could not finish: {_exception_text(exc)}",),
            )
        finally:
            await ctx.close()
        report.scenarios.append(result)
        if on_result is not None:
            on_result(result)
    return report


def _exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

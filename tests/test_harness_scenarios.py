"""graceful.harness.scenarios: the registry (no engine needed; the scenarios themselves run
in test_harness_docker.py and test_rolling_restart.py)."""

from __future__ import annotations

from graceful.harness.contract import Capability
from graceful.harness.rolling import RollingRestart
from graceful.harness.scenarios import (
    SCENARIOS,
    KillUnderLoad,
    Signals,
    StopDuringStream,
    StopOverBudget,
    StopUnderLoad,
    default_names,
    make_scenarios,
    opt_in_scenarios,
    scenario_names,
)
from graceful.harness.workload import Workload


def test_the_default_set_in_run_order() -> None:
    assert (
        scenario_names()
        == list(SCENARIOS)
        == [
            "stop-idle",
            "stop-under-load",
            "stop-over-budget",
            "kill-under-load",
            "signal-storm",
            "stop-during-startup",
            "signals",
            "stop-during-stream",
        ]
    )
    assert SCENARIOS["signals"] is Signals


def test_the_stream_scenario_is_in_the_default_set_only_with_a_stream_path() -> None:
    assert "stop-during-stream" in default_names(Workload())
    without = default_names(Workload(stream_path=""))
    assert "stop-during-stream" not in without
    assert without == [n for n in SCENARIOS if n != "stop-during-stream"]


def test_every_scenario_names_what_it_needs() -> None:
    """The registry skips a scenario whose needs the preflight did not establish."""
    assert KillUnderLoad.needs == {Capability.ITEMS}
    assert StopOverBudget.needs == {Capability.LONG_WORK}
    assert StopDuringStream.needs == {Capability.STREAM}
    assert Capability.ADMIN_READY in RollingRestart.needs
    for cls in [*SCENARIOS.values(), RollingRestart]:
        assert isinstance(cls.needs, frozenset)


def test_opt_in_is_a_class_attribute() -> None:
    from graceful.harness.scenarios import PowerLoss

    assert RollingRestart.opt_in is True
    assert PowerLoss.opt_in is True
    from graceful.harness.scenarios.swarm import SwarmUpdate

    assert opt_in_scenarios() == {
        "rolling-restart": RollingRestart,
        "swarm-update": SwarmUpdate,
        "power-loss": PowerLoss,
    }
    assert not any(getattr(cls, "opt_in", False) for cls in SCENARIOS.values())
    assert scenario_names(opt_in=True) == [
        *SCENARIOS,
        "rolling-restart",
        "swarm-update",
        "power-loss",
    ]


def test_scenarios_are_configured_by_their_fields() -> None:
    (default,) = make_scenarios(["stop-under-load"])
    assert default == StopUnderLoad()
    assert StopUnderLoad(long_requests=16).long_requests == 16
    for cls in [*SCENARIOS.values(), RollingRestart]:
        assert cls.summary
        assert cls().name == cls.name

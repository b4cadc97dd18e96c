"""Scenarios: each starts the image, stops or kills it a particular way, and judges the
outcome from what clients saw, the exit code, the logs and the state left on the volume.

Every scenario is a frozen dataclass whose fields are its knobs (defaults follow the example
HTTP contract); :func:`run_scenarios` runs a list of them against one image and returns a
:class:`~graceful.harness.report.Report`. The ``docker stop`` scenarios live in
:mod:`~graceful.harness.scenarios.stop`, the ``docker kill`` ones in
:mod:`~graceful.harness.scenarios.kill`, ``stop-during-stream`` in
:mod:`~graceful.harness.scenarios.stream`, ``power-loss`` in
:mod:`~graceful.harness.scenarios.power`, ``rolling-restart`` in :mod:`graceful.harness.rolling`,
and the registry in :mod:`~graceful.harness.scenarios.registry`.
"""

from __future__ import annotations

from graceful.harness.context import Settings
from graceful.harness.rolling import RollingRestart
from graceful.harness.scenarios.kill import KillUnderLoad, Signals, SignalStorm
from graceful.harness.scenarios.power import PowerLoss
from graceful.harness.scenarios.registry import (
    SCENARIOS,
    Scenario,
    default_names,
    make_scenarios,
    opt_in_scenarios,
    run_scenarios,
    scenario_names,
)
from graceful.harness.scenarios.stop import (
    StopDuringStartup,
    StopIdle,
    StopOverBudget,
    StopUnderLoad,
)
from graceful.harness.scenarios.stream import StopDuringStream

__all__ = [
    "SCENARIOS",
    "KillUnderLoad",
    "PowerLoss",
    "RollingRestart",
    "Scenario",
    "Settings",
    "SignalStorm",
    "Signals",
    "StopDuringStartup",
    "StopDuringStream",
    "StopIdle",
    "StopOverBudget",
    "StopUnderLoad",
    "default_names",
    "make_scenarios",
    "opt_in_scenarios",
    "run_scenarios",
    "scenario_names",
]

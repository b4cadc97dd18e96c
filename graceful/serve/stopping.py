"""The rules of a supervised stop: deadlines, the container's exit code, its report lines.

Pure functions and values, so that they can be read (and tested) apart from the processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from graceful.config import Config
from graceful.environment import from_environment
from graceful.exceptions import ConfigError
from graceful.recorder import rounded
from graceful.serve.processes import WorkerProcess
from graceful.status import ExitCode
from graceful.watchdog import grace_for

__all__ = [
    "StopDeadlines",
    "SupervisorSettings",
    "worker_config",
    "worker_line",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSettings:
    """How the supervisor looks after its workers.

    Args:
        no_workers_timeout: seconds without any ready worker after which ``/livez`` fails
            (``GRACEFUL_NO_WORKERS_TIMEOUT``).
        restart_backoff: seconds before the first replacement of a worker that failed quickly.
        restart_backoff_max: cap on the doubling backoff.
        stable_after: a worker ready this many seconds before it exited failed "slowly": its
            slot's backoff starts again from ``restart_backoff``.
        max_quick_failures: a slot whose worker fails quickly this many times in a row ends
            the service (exit code 7) instead of restarting it forever (a crash loop).
    """

    no_workers_timeout: float = 30.0
    restart_backoff: float = 0.1
    restart_backoff_max: float = 5.0
    stable_after: float = 10.0
    max_quick_failures: int = 5

    def __post_init__(self) -> None:
        _check_settings(dataclasses.asdict(self), lambda name: f"{name}={getattr(self, name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorSettings:
        """Read ``GRACEFUL_NO_WORKERS_TIMEOUT``.

        Raises:
            ConfigError: it is not a positive number of seconds.
        """
        return from_environment(
            cls,
            {"no_workers_timeout": "GRACEFUL_NO_WORKERS_TIMEOUT"},
            environ=environ,
            overrides={},
            parse=_parse_seconds,
            validate=_check_settings,
        )


def _parse_seconds(name: str, raw: str, label: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{label} must be a positive number of seconds") from None


def _check_settings(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    for name in ("no_workers_timeout", "restart_backoff", "restart_backoff_max"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{label(name)} must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class StopDeadlines:
    """The deadlines of the container's stop, on the ``time.monotonic()`` clock.

    ``exit_at`` is what a single process would have (``stop_timeout - margin`` after the
    signal). Before it the supervisor keeps ``settle`` to kill, collect and report
    (``kill_at``); before that, each worker's own watchdog and its backstop get their grace
    (two of ``min(margin / 2, 0.25)``, as ``Runtime.run`` arms them) and another ``settle``, so
    a stuck worker says what it was stuck on before it is killed. ``worker_exit_by`` is the
    deadline the workers plan their stop to.
    """

    start: float
    worker_exit_by: float
    kill_at: float
    exit_at: float

    @classmethod
    def plan(cls, config: Config, start: float) -> StopDeadlines:
        margin = config.effective_margin
        exit_at = start + config.stop_timeout - margin
        settle = min(margin / 4, 0.1)
        worker_grace = grace_for(margin)
        kill_at = max(exit_at - settle, start)
        worker_exit_by = max(kill_at - 2 * worker_grace - settle, start)
        return cls(start, worker_exit_by, kill_at, exit_at)


def worker_config(config: Config) -> Config:
    """The settings a worker stops with: the container's, with a reserve that fits its window.

    A worker plans its stop to ``worker_exit_by``, which comes before the container's
    ``exit_at`` by the supervisor's own share. The reserve for cancel, flush and close is
    derived from the stop timeout (at least 0.2 s), so with a short stop timeout it would take
    the whole of the worker's window and leave nothing to ``stop_accept`` and the drain: an
    idle container stopped with ``GRACEFUL_STOP_TIMEOUT=0.3`` exited 4 (hooks cut), where one
    process exits 0. So a worker keeps at most half of its window as reserve.
    """
    window = max(StopDeadlines.plan(config, 0.0).worker_exit_by, 0.0)
    if config.effective_reserve <= window / 2:
        return config
    return replace(config, reserve=round(window / 2, 3))


def worker_line(worker: WorkerProcess, start: float) -> dict[str, Any]:
    """A worker's line in the container's ``shutdown.report``: how and when it ended."""
    status = worker.exited.result() if worker.exited.done() else None
    exited_at = worker.exited_at
    return {
        "worker": worker.index,
        "pid": worker.pid,
        "status": status.describe() if status is not None else "still running",
        "exit_code": int(status.exit_code if status is not None else ExitCode.OVERRAN),
        "seconds": None if exited_at is None else rounded(exited_at - start),
    }

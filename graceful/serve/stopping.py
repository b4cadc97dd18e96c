"""The rules of a supervised stop: deadlines, the container's exit code, its report lines.

Pure functions and values, so that they can be read (and tested) apart from the processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from graceful.config import Config
from graceful.exceptions import ConfigError
from graceful.recorder import rounded
from graceful.serve.processes import WorkerProcess
from graceful.status import ExitCode
from graceful.watchdog import grace_for

__all__ = [
    "SEVERITY",
    "StopDeadlines",
    "SupervisorSettings",
    "most_serious",
    "worker_config",
    "worker_line",
]

#: Exit codes, most serious first: the container exits with the first one any worker has.
#: recorder.py's order (an error, then a failed hook, then cut work), with the two ends a stop
#: can be given from outside placed above a failed hook: both left the flush unfinished.
SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.ERROR,
    ExitCode.OVERRAN,
    ExitCode.FORCED,
    ExitCode.HOOK_FAILED,
    ExitCode.WORK_CUT,
    ExitCode.OK,
)


def most_serious(codes: Iterable[ExitCode]) -> ExitCode:
    """The code the container exits with: the most serious of ``codes`` (OK for none)."""
    return min(codes, key=SEVERITY.index, default=ExitCode.OK)


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

    .. versionadded:: 0.1
    """

    no_workers_timeout: float = 30.0
    restart_backoff: float = 0.1
    restart_backoff_max: float = 5.0
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        for name in ("no_workers_timeout", "restart_backoff", "restart_backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name}={value!r} must be a positive number of seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorSettings:
        """Read ``GRACEFUL_NO_WORKERS_TIMEOUT``.

        Raises:
            ConfigError: it is not a positive number of seconds.
        """
        raw = (os.environ if environ is None else environ).get("GRACEFUL_NO_WORKERS_TIMEOUT")
        if raw is None or not raw.strip():
            return cls()
        try:
            return cls(no_workers_timeout=float(raw))
        except (ValueError, ConfigError):
            raise ConfigError(
                f"GRACEFUL_NO_WORKERS_TIMEOUT={raw!r} must be a positive number of seconds"
            ) from None


@dataclass(frozen=True, slots=True)
class StopDeadlines:
    """The deadlines of the container's stop, on the ``time.monotonic()`` clock.

    ``exit_at`` is what a single process would have (``stop_timeout - margin`` after the
    signal). Before it the supervisor keeps ``settle`` to kill, collect and report
    (``kill_at``); before that, each worker's own watchdog and its backstop get their grace
    (two of ``min(margin / 2, 0.25)``, as ``Runtime.run`` arms them) and another ``settle``, so
    a stuck worker says what it was stuck on before it is killed. ``worker_exit_by`` is the
    deadline the workers plan their stop to.

    .. versionadded:: 0.1
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

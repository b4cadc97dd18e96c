"""The supervisor's N worker slots: start, watch and replace the workers while serving.

A worker that exits while serving is logged with its status and replaced after a backoff that
doubles with each quick failure of its slot (``restart_backoff`` up to ``restart_backoff_max``);
a worker that was ready for ``stable_after`` seconds before it exited starts its slot's
backoff again. A worker that fails before any worker has ever been ready fails the container:
a bad target or setting, which restarting will not fix.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

from graceful.logs import get_logger
from graceful.recorder import rounded
from graceful.serve.aggregate import ENV_VAR, MetricsDirectory, SupervisorStats
from graceful.serve.control import WorkerStart
from graceful.serve.processes import ExitStatus, WorkerProcess
from graceful.serve.stopping import SupervisorSettings
from graceful.status import LifecycleState

__all__ = ["WorkerPool"]


class WorkerPool:
    """N slots, each with its current worker process.

    Args:
        size: N.
        start_for: the start message of the worker of a slot.
        settings: backoff and the ``/livez`` tolerance.
        stats: the supervisor's counts, kept up to date here.
        on_failed: called with a reason when the container must fail (a worker failed
            before any was ready).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        size: int,
        start_for: Callable[[int], WorkerStart],
        settings: SupervisorSettings,
        stats: SupervisorStats,
        on_failed: Callable[[str], None],
    ) -> None:
        self.size = size
        self.start_for = start_for
        self.settings = settings
        self.stats = stats
        self.on_failed = on_failed
        self.log = get_logger()
        self.worker_module = "graceful.serve.worker"  # what ``python -m`` runs in a worker
        self.workers: dict[int, WorkerProcess] = {}
        self.failed = False
        self.crash_loop = False
        self.listener: socket.socket | None = None
        self.metrics: MetricsDirectory | None = None
        self._closed = False
        self._ever_ready: set[int] = set()  # slots whose worker was ready at least once
        self._no_workers_since: float | None = None
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, asyncio.TimerHandle] = {}

    def start(self, listener: socket.socket, metrics: MetricsDirectory | None) -> None:
        """Start a worker in every slot, sharing ``listener``."""
        self.listener, self.metrics = listener, metrics
        for index in range(self.size):
            self._start(index)

    def close(self) -> list[WorkerProcess]:
        """No more starts or replacements (a stop began); the workers still running."""
        self._closed = True
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        return [w for w in self.workers.values() if w.running]

    def any_ready(self) -> bool:
        return any(w.ready for w in self.workers.values())

    def without_workers_for(self) -> float:
        """Seconds since the last ready worker went, after one had been (0 while one is)."""
        lost = self._no_workers_since
        return 0.0 if lost is None else time.monotonic() - lost

    def running_pids(self) -> list[int]:
        return [w.pid for w in self.workers.values() if w.running]

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._closed or self.listener is None:
            return
        env = dict(os.environ)
        # Without a directory to aggregate, a worker given the user's (unusable) one would
        # fail at its first metric: it keeps its metrics to itself instead.
        env.pop(ENV_VAR, None)
        if self.metrics is not None:
            env[ENV_VAR] = self.metrics.path
        try:
            start = self.start_for(index)
            worker = WorkerProcess.spawn(start, self.listener, env=env, module=self.worker_module)
        except OSError as exc:
            self.log.error("worker.start_failed", worker=index, error=str(exc))
            self._restart_later(index, quick=True)
            return
        worker.on_ready = self._ready
        worker.exited.add_done_callback(lambda done: self._exited(worker, done.result()))
        self.workers[index] = worker
        self.log.info("worker.started", worker=index, pid=worker.pid)
        self._count()

    def _ready(self, worker: WorkerProcess) -> None:
        self.log.info(
            "worker.ready",
            worker=worker.index,
            pid=worker.pid,
            seconds=rounded(time.monotonic() - worker.started_at),
        )
        self._ever_ready.add(worker.index)
        self._no_workers_since = None
        self._count()
        starting = self.stats.state is LifecycleState.STARTING
        if starting and len(self._ever_ready) == self.size:
            self.stats.state = LifecycleState.SERVING
            self.log.info("service.ready", workers=self.stats.ready)

    def _exited(self, worker: WorkerProcess, status: ExitStatus) -> None:
        lost = 0
        if self.metrics is not None:
            if not self._closed:
                lost = self.metrics.inflight_of(worker.pid)
            for path in self.metrics.process_dead(worker.pid):
                self.log.warning("metrics.file_removed", worker=worker.index, path=path)
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._count()
        if self._closed:
            return  # part of the stop: reported there
        now = time.monotonic()
        self.log.warning(
            "worker.exited",
            worker=worker.index,
            pid=worker.pid,
            status=status.describe(),
            returncode=status.returncode,
            ran_s=rounded(now - worker.started_at),
            was_ready=worker.ready_at is not None,
        )
        if lost:
            # Answered by nobody: the stop's exit code says so (work cut), not only this line.
            self.stats.requests_lost += lost
            self.log.error(
                "worker.requests_lost",
                worker=worker.index,
                pid=worker.pid,
                requests=lost,
                status=status.describe(),
            )
        if not self._ever_ready:
            self.failed = True
            self.log.error(
                "startup.failed",
                error=f"worker {worker.index} ended ({status.describe()}) before any worker "
                "was ready; see its output above",
            )
            self.on_failed("a worker failed to start")
            return
        if self.stats.ready == 0 and self._no_workers_since is None:
            self._no_workers_since = now
        ready_at = worker.ready_at
        stable = ready_at is not None and now - ready_at >= self.settings.stable_after
        self._restart_later(worker.index, quick=not stable)

    def _restart_later(self, index: int, *, quick: bool) -> None:
        failures = self._failures[index] = self._failures.get(index, 0) + 1 if quick else 1
        settings = self.settings
        if failures >= settings.max_quick_failures:
            # gunicorn's "worker failed to boot": restarting forever would leave /readyz 503
            # and /livez 200, a container stuck instead of failed.
            self.crash_loop = True
            self.log.error(
                "worker.crash_loop",
                worker=index,
                failures=failures,
                error=f"worker {index} failed {failures} times in a row; see its output above",
            )
            self.on_failed(f"worker {index} keeps failing")
            return
        delay = min(settings.restart_backoff * 2 ** (failures - 1), settings.restart_backoff_max)
        self.log.info("worker.restarting", worker=index, delay_s=rounded(delay), failures=failures)
        self.stats.restarts += 1
        loop = asyncio.get_running_loop()
        self._restarts[index] = loop.call_later(delay, self._start, index)

    def _count(self) -> None:
        self.stats.ready = sum(w.ready for w in self.workers.values())
        self.stats.starting = sum(w.ready_at is None for w in self.workers.values())

"""The supervisor's N worker slots: start, watch and replace the workers while serving.

A worker that exits while serving is logged with its status and replaced after a backoff that
doubles with each quick failure of its slot (``restart_backoff`` up to ``restart_backoff_max``);
a worker that was ready for ``stable_after`` seconds before it exited starts its slot's
backoff again. A worker that fails before any worker has ever been ready fails the container:
a bad target or setting, which restarting will not fix.

Workers, replacements included, are forked by the zygote (:mod:`graceful.serve.zygote`)
unless ``worker_start`` is ``spawn``, or the worker module is not graceful's (the tests'
controls). A zygote that is lost while serving (killed, out of memory) is not started again:
the pool spawns its later workers fresh, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

from graceful.logs import get_logger
from graceful.recorder import rounded
from graceful.serve.aggregate import ENV_VAR, MetricsDirectory, SupervisorStats
from graceful.serve.control import WorkerStart, send_start
from graceful.serve.forking import FORK_TIMEOUT, Child, Zygote, become_subreaper
from graceful.serve.processes import ExitStatus, WorkerProcess
from graceful.serve.stopping import SupervisorSettings
from graceful.serve.zygote import thread_count
from graceful.status import LifecycleState

__all__ = ["WORKER_MODULE", "WorkerPool"]

#: The module a spawned worker runs (``python -m``); forked workers run it too.
WORKER_MODULE = "graceful.serve.worker"


class WorkerPool:
    """N slots, each with its current worker process.

    Args:
        size: N.
        start_for: the start message of the worker of a slot.
        settings: backoff and the ``/livez`` tolerance.
        stats: the supervisor's counts, kept up to date here.
        on_failed: called with a reason when the container must fail (a worker failed
            before any was ready).
        worker_start: ``fork``, ``preload`` or ``spawn``
            (:attr:`~graceful.serve.options.ServeOptions.worker_start`).
    """

    def __init__(
        self,
        *,
        size: int,
        start_for: Callable[[int], WorkerStart],
        settings: SupervisorSettings,
        stats: SupervisorStats,
        on_failed: Callable[[str], None],
        worker_start: str = "fork",
    ) -> None:
        self.size = size
        self.start_for = start_for
        self.settings = settings
        self.stats = stats
        self.on_failed = on_failed
        self.log = get_logger()
        self.worker_module = WORKER_MODULE  # what ``python -m`` runs in a worker
        self.worker_start = worker_start
        self.zygote: Zygote | None = None
        self._zygotes: list[Zygote] = []  # every one started, to see it gone at the end
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

    def zygote_pids(self) -> set[int]:
        """The zygotes this pool started: its own children, collected by it (not orphans)."""
        return {zygote.pid for zygote in self._zygotes}

    def forks(self) -> bool:
        """Workers are to be forked from a zygote (not spawned)."""
        return self.worker_start != "spawn" and self.worker_module == WORKER_MODULE

    async def prepare(
        self, listener: socket.socket, metrics: MetricsDirectory | None, stop: asyncio.Event
    ) -> None:
        """Start the zygote and wait until it has imported, or a stop came (which ends it).

        A zygote that ends before it is loaded fails the container (a preloaded app that
        cannot be imported, or that cannot be forked), as a worker failing at start does.
        """
        self.listener, self.metrics = listener, metrics
        if not self.forks():
            return
        started = time.monotonic()
        zygote = self._zygotes[0] if self._zygotes else None
        if zygote is None:
            if not become_subreaper():
                self.log.warning("zygote.unavailable", reason="PR_SET_CHILD_SUBREAPER refused")
                return
            try:
                zygote = Zygote.spawn(env=self._env())
            except OSError as exc:
                self.log.warning("zygote.unavailable", reason=str(exc))
                return
            self._zygotes.append(zygote)
        forked = isinstance(zygote.popen, Child)
        self.log.info(
            "zygote.started", pid=zygote.pid, worker_start=self.worker_start, forked=forked
        )
        try:
            zygote.begin(self.start_for(0), self._env())
        except ValueError as exc:  # an environment too large for one frame of the link
            self.log.warning("zygote.unavailable", reason=str(exc), then="workers are spawned")
            zygote.close()  # it exits; collected by ``zygotes_gone``
            return
        loading = asyncio.ensure_future(zygote.loaded())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            zygote.terminate()  # a stop during its import: the import ends, exit 0
            return  # collected by ``zygotes_gone``, by the stop's deadline
        if loading.result():
            self.zygote = zygote
            seconds = rounded(time.monotonic() - started)
            self.log.info("zygote.ready", pid=zygote.pid, seconds=seconds)
            return
        code = await zygote.wait(timeout=FORK_TIMEOUT)
        if stop.is_set():
            return
        self.failed = True
        self.log.error(
            "startup.failed",
            error=f"the zygote ended (exit {code}) before it was loaded; see its output above",
        )
        self.on_failed("the zygote failed to load")

    def fork_zygote(self) -> None:
        """Fork the zygote from this process, if workers are forked: call it before any event
        loop or thread exists (else, or if the fork fails, :meth:`prepare` spawns one).

        The zygote and its workers then share this process's pages (the modules graceful's
        command and the supervisor imported), as gunicorn's workers share its arbiter's.
        """
        if not self.forks() or thread_count() > 1 or not become_subreaper():
            return
        with contextlib.suppress(OSError):
            self._zygotes.append(Zygote.fork_here())

    def start(self, listener: socket.socket, metrics: MetricsDirectory | None) -> None:
        """Start a worker in every slot, sharing ``listener``."""
        self.listener, self.metrics = listener, metrics
        for index in range(self.size):
            self._start(index)

    async def zygotes_gone(self, timeout: float) -> None:
        """Wait until every zygote started has exited (SIGKILL after ``timeout``)."""
        for zygote in self._zygotes:
            zygote.close()
            code = await zygote.wait(timeout)
            self.log.debug("zygote.exited", pid=zygote.pid, returncode=code)

    def close(self) -> list[WorkerProcess]:
        """No more starts or replacements (a stop began); the workers still running."""
        self._closed = True
        if self.zygote is not None:
            self.zygote.close()  # it forks nothing more, and exits
            self.zygote = None
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
        try:
            start = self.start_for(index)
            worker = self._fork(start) if self.zygote is not None else None
            if worker is None:
                env = self._env()
                module = self.worker_module
                worker = WorkerProcess.spawn(start, self.listener, env=env, module=module)
        except OSError as exc:
            self.log.error("worker.start_failed", worker=index, error=str(exc))
            self._restart_later(index, quick=True)
            return
        worker.on_ready = self._ready
        worker.exited.add_done_callback(lambda done: self._exited(worker, done.result()))
        self.workers[index] = worker
        self.log.info("worker.started", worker=index, pid=worker.pid)
        self._count()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Without a directory to aggregate, a worker given the user's (unusable) one would
        # fail at its first metric: it keeps its metrics to itself instead.
        env.pop(ENV_VAR, None)
        if self.metrics is not None:
            env[ENV_VAR] = self.metrics.path
        return env

    def _fork(self, start: WorkerStart) -> WorkerProcess | None:
        """A worker forked by the zygote; None (spawn it) once the zygote is lost."""
        assert self.zygote is not None
        assert self.listener is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = self.zygote.fork(start.index, self.listener, theirs)
        except OSError as exc:
            ours.close()
            self.log.warning(
                "zygote.lost", pid=self.zygote.pid, error=str(exc), then="workers are spawned"
            )
            self.zygote.close()
            self.zygote = None
            return None
        finally:
            theirs.close()
        with contextlib.suppress(OSError):  # it died at once: its exit says why
            send_start(ours, start)
        return WorkerProcess.forked(start.index, pid, ours)

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
            if self.failed:
                return  # said once: forked together, workers fail at their import together
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

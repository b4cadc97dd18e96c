"""``graceful serve --workers N``: a supervisor that owns the signals and N worker processes.

The supervisor is the container's main process (PID 1 under Docker): it binds the listening
socket once, starts N workers (:mod:`graceful.serve.worker`, each the full graceful runtime)
that share it, serves the one admin server of the container, and reaps every child. It never
imports the app. Workers are forked by a zygote that the supervisor forks before its event loop
starts (:mod:`graceful.serve.zygote`), unless ``--worker-start spawn``.

While serving, a worker that exits is replaced (:mod:`graceful.serve.pool`). ``/livez``
fails once no worker has been ready for ``GRACEFUL_NO_WORKERS_TIMEOUT`` seconds; ``/readyz``
answers 200 once all N started, while at least one is ready, and never after a stop began.

On a stop signal (see :class:`StopDeadlines` for the numbers):

1. ``/readyz`` answers 503 at once;
2. the supervisor closes its copy of the listener (see :mod:`graceful.serve.listeners` for why
   no connection waiting in the backlog is reset) and sends every worker ``stop`` with the
   absolute deadline ``worker_exit_by`` (:mod:`graceful.serve.control`);
3. the workers stop in their phases and exit; a second signal is passed on as ``skip_drain``;
   a third exits at once (the workers die with the supervisor: ``PR_SET_PDEATHSIG``, or the
   PID namespace's end);
4. a worker still running at ``kill_at`` is killed (SIGKILL) and counts as overran;
5. one ``shutdown.report`` for the container, a line per worker, and the exit code: the most
   serious of the workers' (``ExitCode.worst``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
from typing import Any

from graceful.config import Config
from graceful.exceptions import ConfigError
from graceful.logs import get_logger
from graceful.reaper import ZombieReaper, start_reaper
from graceful.recorder import rounded
from graceful.serve.aggregate import (
    ENV_VAR,
    MetricsDirectory,
    SupervisorStats,
    container_registry,
)
from graceful.serve.control import Op, WorkerStart
from graceful.serve.listeners import SocketFile, accept_new_connections, bind_listener
from graceful.serve.options import ServeOptions
from graceful.serve.pool import WorkerPool
from graceful.serve.processes import WorkerProcess, write_whole_lines
from graceful.serve.stopping import (
    StopDeadlines,
    SupervisorSettings,
    worker_config,
    worker_line,
)
from graceful.shell import ProcessShell
from graceful.signals import Escalation, StartupSignals
from graceful.status import ExitCode, LifecycleState

__all__ = ["Supervisor", "run_supervisor"]


def run_supervisor(
    spec: str,
    options: ServeOptions,
    config: Config,
    *,
    settings: SupervisorSettings | None = None,
    startup: StartupSignals | None = None,
) -> int:
    """Serve ``spec`` with ``options.workers`` worker processes; return the exit code.

    Args:
        spec: the target, ``"module:attr"``, imported by each worker (never here).
        options: how to serve it; ``workers`` is N.
        config: the stop budget, admin server, signals and logs of the container.
        settings: ``None`` reads them from the environment.
        startup: the command's startup signal handlers: a signal they caught stops the
            supervisor as soon as it exists.
    """
    try:
        settings = SupervisorSettings.from_env() if settings is None else settings
    except ConfigError as exc:
        print(f"graceful serve: configuration error: {exc}", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    supervisor = Supervisor(spec, options, config, settings)
    if startup is not None:
        startup.hand_over(supervisor)
    return supervisor.run()


class Supervisor:
    """Runs N workers for one container and stops them together (see the module docs)."""

    def __init__(
        self, spec: str, options: ServeOptions, config: Config, settings: SupervisorSettings
    ) -> None:
        self.spec = spec
        self.options = options
        self.config = config
        self.settings = settings
        self.log = get_logger()
        self.stats = SupervisorStats()
        self.pool = WorkerPool(
            size=options.workers,
            start_for=self._worker_start,
            settings=settings,
            stats=self.stats,
            on_failed=self.request_stop,
            worker_start=options.worker_start,
        )
        self.listener: socket.socket | None = None
        self.metrics: MetricsDirectory | None = None
        self.stop_reason: str | None = None
        self._stop_requested = asyncio.Event()
        self._stop_sent = False
        self._skip_drain: str | None = None
        self._shell = ProcessShell(
            config,
            log=self.log,
            exit_at=lambda at: StopDeadlines.plan(config, at).exit_at,
            on_signal=self._signal_arrived,
            describe=lambda: {"reason": self.stop_reason, "workers": self.pool.running_pids()},
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plan: StopDeadlines | None = None
        self._stopping: list[WorkerProcess] = []
        self._socket_file: SocketFile | None = None

    # -- health ------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """``/readyz``: started, a worker ready, no stop begun."""
        return (
            self.stats.state is LifecycleState.SERVING
            and not self._stop_requested.is_set()
            and self.pool.any_ready()
        )

    def is_live(self) -> bool:
        """``/livez``: not stopped, and not without a ready worker for too long."""
        if self.pool.without_workers_for() > self.settings.no_workers_timeout:
            return False
        return self.stats.state is not LifecycleState.STOPPED

    def request_stop(self, reason: str) -> None:
        """Stop the container, as a stop signal does. Later calls do nothing."""
        if not self._stop_requested.is_set():
            self.stop_reason = reason
            self._stop_requested.set()

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve on a new event loop until stopped; return the container's exit code."""
        # First of all: as a container's PID 1, a stop signal that finds no handler is
        # dropped, and ``docker stop`` would wait for SIGKILL. One that comes before the loop
        # runs is kept and acted on once it does (``ProcessShell``).
        self._shell.install_signals()
        self.pool.fork_zygote()  # before the loop and its threads: see WorkerPool.fork_zygote
        try:
            return self._shell.run(self.serve, output=write_whole_lines)
        finally:
            self._shell.release()
            gc.freeze()  # a shorter interpreter teardown, as Runtime.run

    async def serve(self) -> int:
        """Start the workers, serve until a stop, stop them; return the exit code."""
        self._loop = asyncio.get_running_loop()
        if self._shell.signals is None:  # not installed by ``run``
            self._shell.install_signals()
        self._shell.attach(self._loop)  # and handles those that arrived before the loop ran
        reap = self.config.reap_zombies
        if reap is None and self.pool.forks():
            reap = True  # a subreaper (see ``WorkerPool.prepare``): orphans come to us too
        reaper = start_reaper(reap, self.log, owned=self.pool.zygote_pids)
        try:
            code = await self._serve()
            self._report(code, reaper.reaped if reaper is not None else 0)
            return int(code)
        finally:
            await self._clean_up(reaper)

    async def _serve(self) -> ExitCode:
        self.log.info(
            "service.starting",
            pid=os.getpid(),
            pid1=os.getpid() == 1,
            workers=self.options.workers,
            address=self.options.address,
            stop_timeout=self.config.stop_timeout,
        )
        try:
            self.metrics = MetricsDirectory.prepare(os.environ)
        except OSError as exc:
            self.log.warning("metrics.not_aggregated", error=str(exc), variable=ENV_VAR)
        else:
            metrics = self.metrics
            if metrics.instead_of is not None:
                self.log.warning(
                    "metrics.directory_replaced",
                    variable=ENV_VAR,
                    unusable=metrics.instead_of,
                    error=metrics.why,
                    path=metrics.path,
                )
            self.log.info("metrics.directory", path=metrics.path, owned=metrics.owned)
        started = await self._shell.start_admin(
            is_live=self.is_live,
            is_ready=self.is_ready,
            registry=container_registry(self.metrics, self.stats),
        )
        if not started:
            return ExitCode.ERROR
        # After the admin server: the listener is bound but not listening until a worker
        # serves, so a server started after it on the same port (ADMIN_PORT = PORT) would
        # take the port from under the workers; bound after it, the conflict is ours to see.
        try:
            self.listener = bind_listener(self.options)
        except OSError as exc:
            self.log.error("startup.failed", error=f"{self.options.address}: {exc.strerror}")
            return ExitCode.ERROR
        if self.options.uds is not None and self.options.fd is None:
            self._socket_file = SocketFile.of(self.listener)  # ours to remove at exit
        if self.options.fd is not None and accept_new_connections(self.listener):
            # Left by an earlier server on this socket that was killed during its stop.
            self.log.warning("listener.stale_filter_removed", fd=self.options.fd)
        if not self._stop_requested.is_set():  # a stop before any worker starts none
            await self.pool.prepare(self.listener, self.metrics, self._stop_requested)
        if not self._stop_requested.is_set():
            self.pool.start(self.listener, self.metrics)
        await self._stop_requested.wait()
        return await self._stop()

    def _worker_start(self, index: int) -> WorkerStart:
        config = worker_config(self.config)
        return WorkerStart(index=index, spec=self.spec, options=self.options, config=config)

    # -- signals -----------------------------------------------------------------------------

    def _signal_arrived(self, sig: signal.Signals, level: Escalation) -> None:
        self.stats.signals[sig.name] += 1
        if level is Escalation.REPEAT:
            self.log.debug("signal.repeated", signal=sig.name)
            return
        self.log.info("signal.received", signal=sig.name, level=int(level))
        if level is Escalation.STOP:
            self.request_stop(f"signal {sig.name}")
        elif level is Escalation.SKIP_TO_FLUSH and self._skip_drain is None:
            self._skip_drain = f"signal {sig.name}"
            self.log.warning(
                "shutdown.escalated",
                signal=sig.name,
                action="every worker skips the rest of its drain; a third signal exits at once",
            )
            if self._stop_sent:
                self._send_all({"op": Op.SKIP_DRAIN, "reason": self._skip_drain})

    def _send_all(self, message: dict[str, Any]) -> None:
        for worker in self._stopping:
            worker.send(message)

    # -- stopping ----------------------------------------------------------------------------

    async def _stop(self) -> ExitCode:
        now = time.monotonic()
        signal_at = self._shell.signal_at
        start = now if signal_at is None else min(signal_at, now)
        plan = self._plan = StopDeadlines.plan(self.config, start)
        if self._shell.watchdog is not None:
            self._shell.watchdog.arm(plan.exit_at)
            self._shell.watchdog.arm_backstop()
        self.stats.state = LifecycleState.STOPPING
        stopping = self._stopping = self.pool.close()
        self._release_listener()
        self.log.info(
            "shutdown.started",
            reason=self.stop_reason,
            stop_timeout=self.config.stop_timeout,
            workers=[w.pid for w in stopping],
            plan={
                "workers_exit_by_s": rounded(plan.worker_exit_by - start),
                "kill_at_s": rounded(plan.kill_at - start),
                "exit_by_s": rounded(plan.exit_at - start),
            },
        )
        self._send_all({"op": Op.STOP, "exit_by": plan.worker_exit_by, "reason": self.stop_reason})
        self._stop_sent = True
        if self._skip_drain is not None:
            self._send_all({"op": Op.SKIP_DRAIN, "reason": self._skip_drain})
        await self._wait_exits(stopping, plan.kill_at)
        late = [w for w in stopping if w.running]
        for worker in late:
            self.log.error(
                "worker.killed",
                worker=worker.index,
                pid=worker.pid,
                reason="not done at its deadline",
            )
            worker.kill()
        await self._wait_exits(late, plan.exit_at)
        self.stats.state = LifecycleState.STOPPED
        codes = [
            w.exited.result().exit_code if w.exited.done() else ExitCode.OVERRAN for w in stopping
        ]
        if self.pool.failed:
            codes.append(ExitCode.ERROR)
        if self.pool.crash_loop:
            codes.append(ExitCode.WORKER_FAILED)
        if self.stats.requests_lost:
            codes.append(ExitCode.WORK_CUT)
        return ExitCode.worst(codes)

    async def _wait_exits(self, workers: list[WorkerProcess], deadline: float) -> None:
        pending = [w.exited for w in workers if w.running]
        if pending:
            await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), 0.0))

    def _release_listener(self) -> None:
        """Close the supervisor's copy of the listener: from now on only workers hold it.

        Not an inherited one (``--fd``): its owner keeps it after us anyway, and the filter
        the workers put on it must come off once they are gone (see ``_clean_up``).
        """
        if self.listener is not None and self.options.fd is None:
            self.listener.close()

    def _report(self, code: ExitCode, zombies_reaped: int) -> None:
        plan = self._plan
        now = time.monotonic()
        start = plan.start if plan is not None else now
        workers = [worker_line(worker, start) for worker in self._stopping]
        self.log.log(
            20 if code is ExitCode.OK else 30,
            "shutdown.report",
            reason=self.stop_reason,
            exit_code=int(code),
            exit_status=code.name.lower(),
            seconds=rounded(now - start),
            stop_timeout=self.config.stop_timeout,
            overran=plan is not None and now > plan.exit_at,
            workers=workers,
            signals=dict(self.stats.signals),
            requests_lost=self.stats.requests_lost,
            zombies_reaped=zombies_reaped,
        )

    async def _clean_up(self, reaper: ZombieReaper | None) -> None:
        plan = self._plan
        await self.pool.zygotes_gone(1.0 if plan is None else plan.kill_at - time.monotonic())
        await self._shell.close_admin()
        if reaper is not None:
            await reaper.stop()
        if self.listener is not None:
            if self.options.fd is not None and accept_new_connections(self.listener):
                self.log.debug("listener.filter_removed", fd=self.options.fd)
            self.listener.close()
        if self._socket_file is not None:
            # Only the socket this supervisor bound: a bind that failed left the path to
            # whoever had it (a user's file, another server's socket).
            self._socket_file.remove()
        if self.metrics is not None:
            self.metrics.remove()

"""The runtime: start a service, serve until a stop signal, stop it in ordered phases.

A stop runs these phases, each logged with its duration and share of the budget:

1. ``unready``: ``/readyz`` answers 503 (from the moment the signal arrives).
2. ``delay``: optional propagation delay while load balancers stop routing here.
3. ``stop_accept``: listeners close; new connections are refused.
4. ``drain``: in-flight work finishes; idle connections close; the main task and tracked
   tasks are awaited.
5. ``cancel``: what still runs at the drain deadline is cancelled, with a short grace.
6. ``flush``: state hooks run, with time reserved for them even when drain overran.
7. ``close``: resources close in reverse order of startup.

Then one ``shutdown.report`` event summarises the stop and ``serve`` returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry

from graceful.budget import Budget
from graceful.config import Config
from graceful.draining import Drainable
from graceful.exceptions import ConfigError
from graceful.hooks import Phase
from graceful.logs import get_logger, lossy_output
from graceful.metrics import Metrics
from graceful.reaper import ZombieReaper, start_reaper
from graceful.recorder import ShutdownRecorder
from graceful.registration import Registrations
from graceful.runner import (
    end_child_processes,
    exit_now_if_threads_block,
    pending_labels,
)
from graceful.shell import ProcessShell
from graceful.shutdown import Shutdown
from graceful.signals import Escalation
from graceful.startup import StartOutcome, log_starting, run_startup
from graceful.status import ExitCode, LifecycleState

__all__ = ["ExitCode", "LifecycleState", "Phase", "Runtime", "current_runtime", "run"]

MainFunc = Callable[["Runtime"], Awaitable[object]]


_current: contextvars.ContextVar[Runtime] = contextvars.ContextVar("graceful_runtime")


def current_runtime() -> Runtime:
    """The runtime serving the current task: how a request handler reaches it.

    Tasks inherit it from the runtime (``main``, the servers it starts and their request
    handlers), so a handler can start tracked background work with
    ``current_runtime().create_task(...)``.

    Raises:
        RuntimeError: called outside a runtime's ``serve``.

    .. versionadded:: 0.1
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "current_runtime() was called outside a running graceful runtime"
        ) from None


def bind_current(runtime: Runtime) -> contextvars.Token[Runtime]:
    """Make ``runtime`` what ``current_runtime()`` returns in this context (and its tasks)."""
    return _current.set(runtime)


def unbind_current(token: contextvars.Token[Runtime]) -> None:
    """Undo :func:`bind_current`."""
    _current.reset(token)


class Runtime(Registrations):
    """Runs one service: startup, serving, and the ordered, deadline-aware stop.

    Args:
        config: settings; ``None`` reads them from the environment (``Config.from_env()``).
        registry: where metrics are registered; the default prometheus registry if omitted.

    .. versionadded:: 0.1
    """

    def __init__(
        self, config: Config | None = None, *, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__()
        self.config = Config.from_env() if config is None else config
        self.registry = REGISTRY if registry is None else registry
        self.metrics = Metrics(self.registry)
        self.log = get_logger()
        self.recorder = ShutdownRecorder(self.metrics, self.log)
        self.state = LifecycleState.STARTING
        self.stop_reason: str | None = None
        self.exit_code: int | None = None
        self._main_task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._serving = asyncio.Event()
        self._stopped = asyncio.Event()
        self._crashed = False
        self._exit_by: float | None = None
        self._main_ready = False
        self._owns_loop = False
        self._shell = ProcessShell(
            self.config,
            log=self.log,
            exit_at=lambda at: at + self.config.stop_timeout - self.config.effective_margin,
            on_signal=self._signal_arrived,
            describe=self._describe_overrun,
        )
        self._stop: Shutdown | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase | None:
        """The stop phase under way, if a stop is."""
        return self._stop.phase if self._stop is not None else None

    @property
    def budget(self) -> Budget | None:
        """The deadlines of the stop, once it has begun."""
        return self._stop.budget if self._stop is not None else None

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: started, main ready, and no stop has begun."""
        return (
            self.state is LifecycleState.SERVING
            and self._main_ready
            and not self._stop_requested.is_set()
        )

    def mark_ready(self) -> None:
        """Declare the service ready before ``main`` returns (for a ``main`` that loops).

        Readiness otherwise turns true when ``main`` returns, that is once its servers listen.
        """
        if not self._main_ready:
            self._main_ready = True
            self.log.info("service.ready")

    @property
    def stopping(self) -> bool:
        """True from the moment a stop begins (the signal), before anything is drained."""
        return self._stop_requested.is_set()

    async def wait_stopping(self) -> None:
        """Return when a stop begins (at once if it has)."""
        await self._stop_requested.wait()

    async def wait_serving(self) -> None:
        """Return when startup has finished and the service serves."""
        await self._serving.wait()

    async def wait_stopped(self) -> None:
        """Return when the stop has finished."""
        await self._stopped.wait()

    def time_left(self) -> float | None:
        """Seconds until the exit deadline once a stop has begun, else ``None``."""
        if self.budget is None or self._loop is None:
            return None
        return max(self.budget.exit_at - self._loop.time(), 0.0)

    def record_flushed(self, count: int) -> None:
        """Count items written to durable state by a flush (shown in the report)."""
        self.recorder.flushed_items(count)

    def _on_drainable_added(self, drainable: Drainable) -> None:
        if self._stop is not None and self.phase is not Phase.UNREADY:
            # main was still starting servers when the stop began: stop this one at once.
            self.log.warning("drainable.added_during_stop", server=drainable.name)
            late = self._stop.stop_accepting(drainable)
            _ = self.create_task(late, name=f"stop {drainable.name}")

    def _closing(self) -> bool:
        return self._phase_has_run(Phase.CLOSE)

    def _phase_has_run(self, phase: Phase) -> bool:
        # A phase's hooks are taken when it begins: registering during it is too late as well.
        if self.state is LifecycleState.STOPPED:
            return True
        order = list(Phase)
        return self.phase is not None and order.index(self.phase) >= order.index(phase)

    def request_stop(self, reason: str = "requested", *, exit_by: float | None = None) -> None:
        """Start the stop sequence, exactly as a stop signal does. Later calls do nothing.

        ``exit_by``: a deadline from outside (a supervisor's), on the ``time.monotonic()``
        clock, which is system-wide on Linux: the budget then ends there, not ``stop_timeout``
        after now.
        """
        if self._stop_requested.is_set():
            return
        self.stop_reason, self._exit_by = reason, exit_by
        self._stop_requested.set()

    def skip_drain(self, reason: str = "requested") -> None:
        """Skip the rest of the drain and go to flush, as a second stop signal does."""
        self.request_stop(reason)
        if not self._force.is_set():
            self._force.set()
            self.log.warning(
                "shutdown.escalated",
                reason=reason,
                action="drain skipped (if still under way), straight to flush; a third signal "
                "exits at once",
            )

    # -- serving -----------------------------------------------------------------------------

    def run(self, main: MainFunc | None = None) -> int:
        """Serve on a new event loop until stopped; return the exit code (see ``graceful.run``).

        Use it as a container entrypoint: ``raise SystemExit(runtime.run(main))``. It owns the
        process for the stop: a watchdog ends it at the exit deadline whatever the loop is
        doing; tasks nobody tracked and suspended async generators are closed, by name, within
        the deadline; threads that are not daemons get until the deadline, then the process
        exits without them. Afterwards the previous signal handlers are back.
        """
        self._owns_loop = True
        # A log line nobody can read any more must not end the stop (lossy_output).
        code = self._shell.run(lambda: self.serve(main), output=lossy_output)
        if code == ExitCode.ERROR and self._loop is None:
            return code  # a setting made the loop impossible: nothing ran
        end_child_processes(self.time_left() or 0.0, self.log)
        exit_now_if_threads_block(code, self.time_left() or 0.0, self.log)
        self.release()
        # The process is about to exit: spare the interpreter's final garbage collections a
        # walk over every object (a 4-5x shorter teardown after the stop; see BENCHMARKS.md).
        gc.freeze()
        return code

    async def serve(self, main: MainFunc | None = None) -> int:
        """Start, serve until a stop is requested, stop in phases; return the exit code.

        Args:
            main: ``async def main(runtime)``, run as a task once startup finished. It may
                return after starting its servers (the runtime keeps serving) or run until
                ``runtime.stopping``. If it raises, the service stops with exit code 1.
        """
        self._loop = asyncio.get_running_loop()
        if not structlog.is_configured():
            # Left to the application (log_format "off") and not configured by it: structlog's
            # default prints every level, so keep graceful's own events at our level at least.
            self.log = self.recorder.log = get_logger(level=self.config.log_level)
        token = bind_current(self)
        reaper = start_reaper(self.config.reap_zombies, self.log)
        self._shell.log = self.log  # the logger chosen above
        self._shell.install_signals()
        self._shell.attach(self._loop)
        signals = self._shell.signals
        try:
            log_starting(self.log, self.config, signals_on=signals is not None)
            started = await self._start()
            if started is StartOutcome.STARTED:
                self._set_state(LifecycleState.SERVING)
                self._serving.set()
                if signals is not None:
                    signals.watch_ownership(self.log, lambda: self.state is LifecycleState.SERVING)
                if main is None:
                    self.mark_ready()
                else:
                    self._main_task = self._loop.create_task(self._run_main(main), name="main")
                    self._tasks.add(self._main_task)
                await self._stop_requested.wait()
            elif started is StartOutcome.FAILED:
                self._crashed = True
                self.request_stop("startup failed")
            await self._shutdown(reaper)
        finally:
            unbind_current(token)
            if not self._owns_loop:
                self.release()
            self._stopped.set()
        assert self.exit_code is not None
        return self.exit_code

    def release(self) -> None:
        """Give back the process: previous signal handlers, watchdog off. Idempotent.

        ``serve`` calls it when it returns; ``run`` only once the loop is closed, so that a late
        stop signal still finds our handler (not the default, which would end us with 143).
        """
        self._shell.release(keep_watchdog=self._terminating())

    def _terminating(self) -> bool:
        # A stop signal other than SIGINT means the supervisor ends this process: the watchdog
        # then stays armed through interpreter teardown (atexit handlers, thread joins). After
        # Ctrl-C or request_stop an embedding program may go on, so it is disarmed.
        first = self._shell.first_signal
        return first is not None and first is not signal.SIGINT and self._owns_loop

    async def _start(self) -> StartOutcome:
        """Start the admin server and run the startup steps; a stop signal aborts startup."""
        started = await self._shell.start_admin(
            is_live=lambda: self.state is not LifecycleState.STOPPED,
            is_ready=lambda: self.ready,
            registry=self.registry,
        )
        if not started:
            return StartOutcome.FAILED
        outcome = await run_startup(self._startup_steps, self._stop_requested, self.log)
        if outcome is StartOutcome.ABORTED:
            self.log.warning("startup.aborted", reason=self.stop_reason)
        return outcome

    async def _run_main(self, main: MainFunc) -> None:
        try:
            await main(self)
            if not self.stopping:
                self.mark_ready()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the cancel phase: ours
            self._main_crashed(asyncio.CancelledError("main was cancelled by its own code"))
        except BaseException as exc:
            self._main_crashed(exc)

    def _main_crashed(self, exc: BaseException) -> None:
        self._crashed = True
        self._main_ready = False  # /readyz: nothing serves
        self.log.error("service.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self.request_stop("main crashed")

    # -- signals -----------------------------------------------------------------------------

    def _signal_arrived(self, sig: signal.Signals, level: Escalation) -> None:
        self.metrics.signals.labels(sig.name).inc()
        self.recorder.signals.append(sig.name)
        if level is Escalation.REPEAT:
            self.log.debug("signal.repeated", signal=sig.name)
            return
        self.log.info("signal.received", signal=sig.name, level=int(level), phase=self.phase)
        if level is Escalation.STOP:
            self.request_stop(f"signal {sig.name}")
        elif level is Escalation.SKIP_TO_FLUSH:
            self.skip_drain(f"signal {sig.name}")

    # -- stopping ----------------------------------------------------------------------------

    async def _shutdown(self, reaper: ZombieReaper | None) -> None:
        loop = asyncio.get_running_loop()
        if self._shell.signals is not None:
            self._shell.signals.check_ownership(self.log)
        now = loop.time()
        signal_at = self._shell.signal_at
        start = now if signal_at is None else min(signal_at, now)
        # A deadline given from outside is on the monotonic clock: move it onto the loop's.
        exit_by = None if self._exit_by is None else now + self._exit_by - time.monotonic()
        budget = Budget.plan(self.config, start, exit_by=exit_by)
        if self._shell.watchdog is not None:
            self._shell.watchdog.arm(time.monotonic() + budget.exit_at - now)
            self._shell.watchdog.arm_backstop()
        stop = self._stop = Shutdown(
            config=self.config,
            budget=budget,
            recorder=self.recorder,
            drainables=self._drainables,
            tasks=self._tasks,
            background=self._background,
            app_background=self._app_background,
            hooks=self._hooks,
            closers=self._closers,
            force=self._force,
            owns_loop=self._owns_loop,
        )
        self._set_state(LifecycleState.STOPPING)
        inflight_at_signal = stop.inflight()
        self.log.info(
            "shutdown.started",
            reason=self.stop_reason,
            stop_timeout=self.config.stop_timeout,
            inflight=inflight_at_signal,
            plan=budget.offsets(),
        )

        async def before_close() -> None:
            if reaper is not None:
                await reaper.stop()
            await self._shell.close_admin()

        result = await stop.run(before_close)
        code = self.recorder.exit_code(
            crashed=self._crashed, drained=result.drained, cut=result.cut
        )
        self.exit_code = int(code)
        self._set_state(LifecycleState.STOPPED)
        self.recorder.report(
            code,
            reason=self.stop_reason,
            budget=stop.budget,
            now=loop.time(),
            stop_timeout=self.config.stop_timeout,
            inflight_at_signal=inflight_at_signal,
            drained=result.drained,
            cut=result.cut,
            zombies_reaped=reaper.reaped if reaper is not None else 0,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _set_state(self, state: LifecycleState) -> None:
        self.state = state
        self.metrics.state.state(str(state))

    def _describe_overrun(self) -> dict[str, Any]:
        # Runs on the watchdog thread while the loop may be blocked: read, never wait.
        return {
            "phase": str(self.phase) if self.phase is not None else None,
            "state": str(self.state),
            "running_hook": list(self._stop.running_hooks) if self._stop is not None else [],
            "pending_tasks": pending_labels(self._loop)[:20],
            "reason": self.stop_reason,
        }


def run(
    main: MainFunc | None = None,
    *,
    config: Config | None = None,
    registry: CollectorRegistry | None = None,
) -> int:
    """Run a service to completion on a new event loop and return its exit code.

    Use it as a container entrypoint: ``raise SystemExit(graceful.run(main))``. The loop is
    uvloop when installed (``GRACEFUL_LOOP=asyncio`` opts out); logging is configured
    (JSON off a TTY) unless structlog already is or ``log_format="off"``. A configuration
    error is printed, naming the setting, and gives exit code 1. See ``Runtime.run`` for what
    owning the process means for the stop (the deadline watchdog).

    To register startup hooks before serving, build the ``Runtime`` yourself and call its
    ``run`` method, which does the same.

    .. versionadded:: 0.1
    """
    try:
        runtime = Runtime(config, registry=registry)
    except ConfigError as exc:
        print(f"graceful: configuration error: {exc}", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    return runtime.run(main)

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
import contextlib
import contextvars
import gc
import io
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from enum import IntEnum, StrEnum
from typing import Any, TypeVar, overload

import structlog
from prometheus_client import REGISTRY, CollectorRegistry

from graceful.budget import Budget
from graceful.config import Config
from graceful.draining import Drainable
from graceful.exceptions import ConfigError, HookError
from graceful.health import AdminServer
from graceful.hooks import (
    HOOK_PHASES,
    CleanupContexts,
    Hook,
    HookFunc,
    HookOutcome,
    Outcome,
    Phase,
    hook_name,
    run_hook,
)
from graceful.logs import configure_logging, get_logger
from graceful.loops import loop_factory
from graceful.metrics import Metrics
from graceful.reaper import ZombieReaper
from graceful.signals import Escalation, StopSignals, shell_pid1_warning
from graceful.watchdog import Watchdog

__all__ = ["ExitCode", "Phase", "Runtime", "State", "current_runtime", "run"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
MainFunc = Callable[["Runtime"], Awaitable[object]]
CleanupFunc = Callable[[], AsyncIterator[Any]]


class State(StrEnum):
    """Lifecycle state of a runtime.

    .. versionadded:: 0.1
    """

    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ExitCode(IntEnum):
    """The exit codes of a stop; the most serious cause wins.

    .. versionadded:: 0.1
    """

    OK = 0
    """Clean stop: everything accepted was answered, every hook succeeded."""
    ERROR = 1
    """Startup failed, the main coroutine crashed, or the configuration is invalid."""
    WORK_CUT = 3
    """In-flight work was cancelled at the drain deadline or skipped by a second signal."""
    HOOK_FAILED = 4
    """A shutdown hook raised or was cut at its deadline: state may not have been flushed."""
    FORCED = 5
    """A third stop signal: the process exited at once."""
    OVERRAN = 6
    """The stop ran past its exit deadline (a blocked event loop, a hook or thread that would
    not end): the watchdog ended the process before SIGKILL could."""


class _Start(StrEnum):
    STARTED = "started"
    FAILED = "failed"
    ABORTED = "aborted"


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


class Runtime:
    """Runs one service: startup, serving, and the ordered, deadline-aware stop.

    Args:
        config: settings; ``None`` reads them from the environment (``Config.from_env()``).
        registry: where metrics are registered; the default prometheus registry if omitted.

    .. versionadded:: 0.1
    """

    def __init__(
        self, config: Config | None = None, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = Config.from_env() if config is None else config
        self.registry = REGISTRY if registry is None else registry
        self.metrics = Metrics(self.registry)
        self.log = get_logger()
        self.state = State.STARTING
        self.phase: Phase | None = None
        self.budget: Budget | None = None
        self.stop_reason: str | None = None
        self.exit_code: int | None = None
        self.admin: AdminServer | None = None
        self._startup_steps: list[tuple[int, Callable[[], Any], bool]] = []
        self._hooks: dict[Phase, list[tuple[int, Hook]]] = {phase: [] for phase in HOOK_PHASES}
        self._cleanup = CleanupContexts()
        self._cleanup_seq: list[int] = []
        self._seq = 0
        self._drainables: list[Drainable] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main_task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._serving = asyncio.Event()
        self._stopped = asyncio.Event()
        self._crashed = False
        self._flushed = 0
        self._outcomes: list[HookOutcome] = []
        self._phase_seconds: dict[str, float] = {}
        self._signals: StopSignals | None = None
        self._signal_names: list[str] = []
        self._ownership_checks = 0
        self._main_ready = False
        self._owns_loop = False
        self._watchdog: Watchdog | None = None
        self._signal_at: float | None = None
        self._leftovers: list[str] = []
        self._running_hooks: list[str] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: started, main ready, and no stop has begun."""
        return (
            self.state is State.SERVING and self._main_ready and not self._stop_requested.is_set()
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
        """True from the moment a stop begins."""
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
        self._flushed += count
        self.metrics.flushed_items.inc(count)

    # -- registration ------------------------------------------------------------------------

    def on_startup(self, func: F) -> F:
        """Register ``async def func() -> None`` to run at startup, in registration order.

        Usable as a decorator.

        Raises:
            HookError: startup has already run (register before ``run``/``serve``; from
                ``main``, set the resource up directly and add a ``close`` hook).
        """
        self._check_startup_open(func)
        self._startup_steps.append((self._next_seq(), func, False))
        return func

    def cleanup_context(self, func: F) -> F:
        """Register an async generator: before ``yield`` runs at startup, after it in ``close``.

        Contexts close in reverse order of startup, interleaved with ``close`` hooks.
        Usable as a decorator.

        Raises:
            HookError: startup has already run (see ``on_startup``).
        """
        self._check_startup_open(func)
        self._startup_steps.append((self._next_seq(), func, True))
        return func

    def _check_startup_open(self, func: object) -> None:
        # A startup step registered after startup would silently never run.
        if self.state is not State.STARTING:
            raise HookError(
                f"{hook_name(func)} was registered as a startup step after startup finished "
                f"(state {self.state}): register it before run()/serve(), or from main set the "
                "resource up directly and register its teardown with "
                "on_shutdown(..., phase='close')"
            )

    @overload
    def on_shutdown(
        self,
        func: F,
        /,
        *,
        phase: Phase | str = Phase.FLUSH,
        timeout: float | None = None,
        name: str | None = None,
    ) -> F: ...

    @overload
    def on_shutdown(
        self,
        func: None = None,
        /,
        *,
        phase: Phase | str = Phase.FLUSH,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]: ...

    def on_shutdown(
        self,
        func: F | None = None,
        /,
        *,
        phase: Phase | str = Phase.FLUSH,
        timeout: float | None = None,
        name: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``async def func() -> None`` to run in a shutdown phase.

        Args:
            func: the hook; omit it to use this as a decorator with arguments.
            phase: ``unready``, ``stop_accept``, ``drain``, ``flush`` (default) or ``close``.
                ``close`` hooks run last registered first; the others in registration order.
            timeout: cap on this hook; it is also bounded by its phase and the exit deadline.
            name: name in logs and the report (the function's name by default).

        Raises:
            ConfigError: unknown phase or a negative timeout.
        """
        try:
            hook_phase = Phase(phase)
        except ValueError:
            raise ConfigError(
                f"phase={phase!r}: hooks attach to one of {', '.join(HOOK_PHASES)}"
            ) from None
        if hook_phase not in HOOK_PHASES:
            raise ConfigError(f"phase={phase!r}: hooks attach to one of {', '.join(HOOK_PHASES)}")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout={timeout!r} must be a positive number of seconds")

        def register(fn: F) -> F:
            hook = Hook(fn, hook_phase, name or hook_name(fn), timeout)
            self._hooks[hook_phase].append((self._next_seq(), hook))
            return fn

        return register if func is None else register(func)

    def add_drainable(self, drainable: Drainable) -> None:
        """Have the runtime stop, drain and abort a server or worker during the stop.

        A drainable added after the listeners were closed (``main`` still starting servers
        when the stop began) stops accepting at once and is drained with the rest.
        """
        self._drainables.append(drainable)
        if self.phase is not None and self.phase is not Phase.UNREADY:
            self.log.warning("drainable.added_during_stop", server=drainable.name)
            _ = self.create_task(
                self._stop_late_drainable(drainable), name=f"stop {drainable.name}"
            )

    async def _stop_late_drainable(self, drainable: Drainable) -> None:
        assert self.budget is not None
        outcome = await run_hook(
            drainable.stop_accepting,
            name=f"{drainable.name}.stop_accepting",
            phase=Phase.STOP_ACCEPT,
            deadline=self.budget.drain_end,
        )
        self._record(outcome)

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start tracked background work: awaited in ``drain``, cancelled in ``cancel``."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def request_stop(self, reason: str = "requested") -> None:
        """Start the stop sequence, exactly as a stop signal does. Later calls do nothing."""
        if self._stop_requested.is_set():
            return
        self.stop_reason = reason
        self._stop_requested.set()

    # -- serving -----------------------------------------------------------------------------

    def run(self, main: MainFunc | None = None) -> int:
        """Serve on a new event loop until stopped; return the exit code (see ``graceful.run``).

        Use it as a container entrypoint: ``raise SystemExit(runtime.run(main))``.
        """
        return _run_sync(self, main)

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
            self.log = get_logger(level=self.config.log_level)
        token = _current.set(self)
        reaper = self._start_reaper()
        self._install_signals()
        try:
            self._log_start()
            started = await self._start()
            if started is _Start.STARTED:
                self._set_state(State.SERVING)
                self._serving.set()
                self._watch_signal_ownership()
                if main is None:
                    self.mark_ready()
                else:
                    self._main_task = self._loop.create_task(self._run_main(main), name="main")
                await self._stop_requested.wait()
            elif started is _Start.FAILED:
                self._crashed = True
                self.request_stop("startup failed")
            await self._shutdown(reaper)
        finally:
            _current.reset(token)
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
        if self._signals is not None:
            self._signals.restore()
        if self._watchdog is not None:
            self._watchdog.disarm()

    async def _start(self) -> _Start:
        """Start the admin server and run the startup steps; a stop signal aborts startup."""
        if self.config.admin_port is not None:
            self.admin = AdminServer(
                host=self.config.admin_host,
                port=self.config.admin_port,
                is_live=lambda: self.state is not State.STOPPED,
                is_ready=lambda: self.ready,
                registry=self.registry,
            )
            try:
                await self.admin.start()
            except ConfigError as exc:
                self.log.error("startup.failed", error=str(exc))
                self.admin = None
                return _Start.FAILED
            self.log.info("admin.listening", host=self.config.admin_host, port=self.admin.port)
        startup = asyncio.get_running_loop().create_task(self._run_startup_steps())
        stop = asyncio.get_running_loop().create_task(self._stop_requested.wait())
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not startup.done():
            self.log.warning("startup.aborted", reason=self.stop_reason)
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
            # Stop what did start; main never runs against half-made resources.
            return _Start.ABORTED
        try:
            startup.result()
        except Exception as exc:
            self.log.error("startup.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return _Start.FAILED
        return _Start.STARTED

    async def _run_startup_steps(self) -> None:
        for seq, func, is_context in self._startup_steps:
            name = hook_name(func)
            started = time.perf_counter()
            if is_context:
                await self._cleanup.enter(func)
                self._cleanup_seq.append(seq)
            else:
                await func()
            self.log.info(
                "startup.step", hook=name, seconds=_rounded(time.perf_counter() - started)
            )

    async def _run_main(self, main: MainFunc) -> None:
        try:
            await main(self)
            if not self.stopping:
                self.mark_ready()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crashed = True
            self.log.error("service.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self.request_stop("main crashed")

    # -- signals -----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self.config.handle_signals:
            return
        self._signals = StopSignals(
            self.config.signals, self._on_signal, hard_exit_code=int(ExitCode.FORCED)
        )
        if not self._signals.install():
            self.log.warning("signals.not_installed", reason="not on the main thread")
            self._signals = None

    def _on_signal(self, sig: signal.Signals, level: Escalation, at: float) -> None:
        # Signal-handler context: record and wake the loop, nothing else. The budget counts
        # from now, not from when a possibly blocked loop gets to it, and the watchdog is armed
        # here for the same reason.
        if level is Escalation.STOP and self._signal_at is None:
            self._signal_at = at
            if self._watchdog is not None:
                self._watchdog.arm(at + self.config.stop_timeout - self.config.effective_margin)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._signal_arrived, sig, level)

    def _signal_arrived(self, sig: signal.Signals, level: Escalation) -> None:
        self.metrics.signals.labels(sig.name).inc()
        self._signal_names.append(sig.name)
        if level is Escalation.REPEAT:
            self.log.debug("signal.repeated", signal=sig.name)
            return
        self.log.info("signal.received", signal=sig.name, level=int(level), phase=self.phase)
        if level is Escalation.STOP:
            self.request_stop(f"signal {sig.name}")
        elif level is Escalation.SKIP_TO_FLUSH and not self._force.is_set():
            self._force.set()
            self.log.warning(
                "shutdown.escalated",
                signal=sig.name,
                action="skip the rest of drain, go to flush; a third signal exits at once",
            )

    def _watch_signal_ownership(self) -> None:
        # Libraries often install handlers while starting (uvicorn, anyio, add_signal_handler):
        # look soon after startup, then now and then while serving.
        if self.state is not State.SERVING or self._loop is None:
            return
        self._check_signal_ownership()
        delay = 0.5 if self._ownership_checks < 4 else 5.0
        self._ownership_checks += 1
        self._loop.call_later(delay, self._watch_signal_ownership)

    def _check_signal_ownership(self) -> None:
        if self._signals is None:
            return
        replaced = self._signals.replaced()
        if replaced:
            self.log.warning(
                "signals.handler_replaced",
                replaced=replaced,
                action="graceful installed its handler again; stop signals start the graceful stop",
            )
            self._signals.reclaim()

    # -- stopping ----------------------------------------------------------------------------

    async def _shutdown(self, reaper: ZombieReaper | None) -> None:
        loop = asyncio.get_running_loop()
        self._check_signal_ownership()
        now = loop.time()
        start = now if self._signal_at is None else min(self._signal_at, now)
        budget = self.budget = Budget.plan(self.config, start)
        if self._watchdog is not None:
            self._watchdog.arm(time.monotonic() + budget.exit_at - now)
            self._watchdog.arm_backstop()
        self._set_state(State.STOPPING)
        inflight_at_signal = self._inflight()
        self.log.info(
            "shutdown.started",
            reason=self.stop_reason,
            stop_timeout=self.config.stop_timeout,
            inflight=inflight_at_signal,
            plan={
                "delay_s": _rounded(budget.delay_end - budget.start),
                "drain_until_s": _rounded(budget.drain_end - budget.start),
                "cancel_until_s": _rounded(budget.cancel_end - budget.start),
                "exit_by_s": _rounded(budget.exit_at - budget.start),
            },
        )
        with self._phase(Phase.UNREADY):
            await self._run_hooks(Phase.UNREADY, budget.drain_end)
        with self._phase(Phase.DELAY):
            await self._wait_force_until(budget.delay_end)
        with self._phase(Phase.STOP_ACCEPT):
            await self._stop_accepting(budget.drain_end)
        with self._phase(Phase.DRAIN):
            # Drain hooks (telling websockets and streams to go away) run beside the drain and
            # are awaited to the end, unless a second signal cuts the drain short.
            drain_hooks = loop.create_task(self._run_hooks(Phase.DRAIN, budget.drain_end))
            drained = await self._drain(budget.drain_end)
            if self._force.is_set():
                budget = self.budget = budget.skip_to_flush(loop.time())
                drain_hooks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain_hooks
        with self._phase(Phase.CANCEL):
            cut = 0 if drained else await self._cancel(budget.cancel_end)
        with self._phase(Phase.FLUSH):
            await self._run_hooks(Phase.FLUSH, budget.exit_at)
        with self._phase(Phase.CLOSE):
            await self._close(budget.exit_at, reaper)
            if self._owns_loop:
                cut += await self._cancel_leftovers(budget.exit_at)
        self._finish(budget, inflight_at_signal, drained, cut, reaper)

    @contextlib.contextmanager
    def _phase(self, phase: Phase) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        assert self.budget is not None
        self.phase = phase
        started = loop.time()
        self.log.debug("phase.started", phase=phase, time_left_s=self.time_left())
        with structlog.contextvars.bound_contextvars(phase=str(phase)):
            try:
                yield
            finally:
                seconds = loop.time() - started
                self._phase_seconds[str(phase)] = _rounded(seconds)
                self.metrics.phase_seconds.labels(str(phase)).set(seconds)
                self.log.info(
                    "phase.finished",
                    phase=str(phase),
                    seconds=_rounded(seconds),
                    budget_share=self.budget.share(seconds),
                    time_left_s=_rounded(self.time_left() or 0.0),
                )

    async def _wait_force_until(self, deadline: float) -> bool:
        """Wait until ``deadline``; return early (True) on a second signal."""
        timeout = deadline - asyncio.get_running_loop().time()
        if timeout <= 0 or self._force.is_set():
            return self._force.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._force.wait()
        return self._force.is_set()

    async def _stop_accepting(self, deadline: float) -> None:
        for drainable in self._drainables:
            outcome = await run_hook(
                drainable.stop_accepting,
                name=f"{drainable.name}.stop_accepting",
                phase=Phase.STOP_ACCEPT,
                deadline=deadline,
            )
            self._record(outcome)
        await self._run_hooks(Phase.STOP_ACCEPT, deadline)

    async def _drain(self, deadline: float) -> bool:
        """Wait for drainables, the main task and tracked tasks; True if all finished.

        Tracked tasks are collected again after every wake-up, so work started during the
        drain is awaited too.
        """
        loop = asyncio.get_running_loop()
        drains = {loop.create_task(d.drain(), name=f"drain {d.name}") for d in self._drainables}
        force = loop.create_task(self._force.wait())
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                while not self._force.is_set():
                    pending = {t for t in drains if not t.done()} | self._work_tasks()
                    if not pending:
                        break
                    await asyncio.wait(pending | {force}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            force.cancel()
        unfinished = {t for t in drains if not t.done()}
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=0.1)
        drained = not unfinished and not self._work_tasks()
        if not drained:
            self.log.warning(
                "drain.incomplete",
                reason="second signal" if self._force.is_set() else "drain deadline",
                inflight=self._inflight(),
            )
        return drained

    async def _cancel(self, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        cut = 0
        for drainable in self._drainables:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                    cut += await drainable.abort()
        tasks = self._work_tasks()
        for task in tasks:
            task.cancel()
        cut += len(tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.0))
            for task in stuck:
                self.log.error("task.refused_to_exit", task=task.get_name(), stack=_stack(task))
        if cut:
            self.metrics.cancelled.inc(cut)
            self.metrics.overruns.inc()
            self.log.warning("work.cancelled", count=cut)
        return cut

    async def _close(self, deadline: float, reaper: ZombieReaper | None) -> None:
        closers: list[tuple[int, str, HookFunc, float | None]] = [
            (seq, hook.name, hook.func, hook.timeout) for seq, hook in self._hooks[Phase.CLOSE]
        ]
        exits = self._cleanup.exits()
        seqs = list(reversed(self._cleanup_seq))
        closers += [(seq, name, func, None) for seq, (name, func) in zip(seqs, exits, strict=True)]
        closers.sort(key=lambda item: item[0], reverse=True)
        for _, name, func, timeout in closers:
            await self._run_one(func, name, Phase.CLOSE, timeout, deadline)
        if reaper is not None:
            await reaper.stop()
        if self.admin is not None:
            await self.admin.close()

    async def _run_hooks(self, phase: Phase, deadline: float) -> None:
        hooks = [hook for _, hook in self._hooks[phase]]
        for i, hook in enumerate(hooks):
            try:
                await self._run_one(hook.func, hook.name, phase, hook.timeout, deadline)
            except asyncio.CancelledError:
                # Only a second signal cancels a phase's hooks: say which ones it cut.
                for skipped in hooks[i:]:
                    self._record(
                        HookOutcome(skipped.name, phase, Outcome.SKIPPED, 0.0, "second signal")
                    )
                raise

    async def _cancel_leftovers(self, deadline: float) -> int:
        """Cancel tasks nobody tracked (``asyncio.create_task`` in a handler), naming each.

        Only when the runtime owns the loop: they would be cancelled silently when it closes.
        Async generators left suspended are closed here too, bounded by the deadline.
        """
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        await asyncio.sleep(0)  # let cancellations requested earlier finish first
        # A task already being cancelled (cancelling() > 0) was cut by its owner, not left over.
        tasks = [
            t for t in asyncio.all_tasks() if t is not me and not t.done() and not t.cancelling()
        ]
        for task in tasks:
            self._leftovers.append(_task_label(task))
            task.cancel()
        if tasks:
            self.log.warning(
                "tasks.leftover_cancelled",
                count=len(tasks),
                tasks=self._leftovers,
                hint="start background work with runtime.create_task (from a handler: "
                "graceful.current_runtime().create_task) so the drain waits for it",
            )
            _, stuck = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.0))
            for task in stuck:
                self.log.error("task.refused_to_exit", task=task.get_name(), stack=_stack(task))
        try:
            async with asyncio.timeout_at(deadline):
                await loop.shutdown_asyncgens()
        except TimeoutError:
            self.log.error("shutdown.asyncgens_abandoned", reason="exit deadline")
            return len(tasks) + 1
        return len(tasks)

    async def _run_one(
        self, func: HookFunc, name: str, phase: Phase, timeout: float | None, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        timeout = timeout if timeout is not None else self.config.hook_timeout
        if timeout is not None:
            deadline = min(deadline, loop.time() + timeout)
        self._running_hooks.append(name)
        try:
            outcome = await run_hook(func, name=name, phase=phase, deadline=deadline)
        finally:
            self._running_hooks.remove(name)
        self._record(outcome)

    def _record(self, outcome: HookOutcome) -> None:
        self._outcomes.append(outcome)
        if outcome.outcome is Outcome.OK:
            self.log.info("hook.finished", hook=outcome.name, seconds=_rounded(outcome.seconds))
            return
        if outcome.outcome is Outcome.SKIPPED:
            self.log.warning("hook.skipped", hook=outcome.name, reason=outcome.error)
            return
        self.metrics.hooks_failed.labels(str(outcome.phase), str(outcome.outcome)).inc()
        self.log.error(
            "hook.timed_out" if outcome.outcome is Outcome.TIMED_OUT else "hook.failed",
            hook=outcome.name,
            seconds=_rounded(outcome.seconds),
            error=outcome.error,
        )

    def _finish(
        self,
        budget: Budget,
        inflight_at_signal: int,
        drained: bool,
        cut: int,
        reaper: ZombieReaper | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        failed = [
            o.name for o in self._outcomes if o.outcome in (Outcome.FAILED, Outcome.TIMED_OUT)
        ]
        if self._crashed:
            code = ExitCode.ERROR
        elif failed:
            code = ExitCode.HOOK_FAILED
        elif cut or not drained:
            code = ExitCode.WORK_CUT
        else:
            code = ExitCode.OK
        self.exit_code = int(code)
        elapsed = loop.time() - budget.start
        overran = loop.time() > budget.exit_at
        self.phase = None
        self._set_state(State.STOPPED)
        self.log.log(
            20 if code is ExitCode.OK else 30,
            "shutdown.report",
            reason=self.stop_reason,
            exit_code=int(code),
            exit_status=code.name.lower(),
            seconds=_rounded(elapsed),
            stop_timeout=self.config.stop_timeout,
            budget_share=budget.share(elapsed),
            overran=overran,
            phases=self._phase_seconds,
            inflight_at_signal=inflight_at_signal,
            drained=drained,
            cancelled=cut,
            flushed=self._flushed,
            hooks={
                "ok": sum(o.outcome is Outcome.OK for o in self._outcomes),
                "failed": sum(o.outcome is Outcome.FAILED for o in self._outcomes),
                "timed_out": sum(o.outcome is Outcome.TIMED_OUT for o in self._outcomes),
                "skipped": sum(o.outcome is Outcome.SKIPPED for o in self._outcomes),
            },
            leftover_tasks=self._leftovers,
            failed_hooks=failed,
            signals=self._signal_names,
            zombies_reaped=reaper.reaped if reaper is not None else 0,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.state.state(str(state))

    def _inflight(self) -> int:
        return sum(d.inflight() for d in self._drainables) + len(self._work_tasks())

    def _work_tasks(self) -> set[asyncio.Task[Any]]:
        tasks = {t for t in self._tasks if not t.done()}
        if self._main_task is not None and not self._main_task.done():
            tasks.add(self._main_task)
        return tasks

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("task.failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    def _start_reaper(self) -> ZombieReaper | None:
        reap = self.config.reap_zombies
        if reap is None:
            reap = os.getpid() == 1
        if not reap:
            return None
        reaper = ZombieReaper(
            on_reaped=lambda pid, status: self.log.info("zombie.reaped", pid=pid, status=status)
        )
        reaper.start()
        return reaper

    def _describe_overrun(self) -> dict[str, Any]:
        # Runs on the watchdog thread while the loop may be blocked: read, never wait.
        running = list(self._running_hooks)
        tasks: list[str] = []
        if self._loop is not None:
            with contextlib.suppress(Exception):
                tasks = [_task_label(t) for t in asyncio.all_tasks(self._loop) if not t.done()]
        return {
            "phase": str(self.phase) if self.phase is not None else None,
            "state": str(self.state),
            "running_hook": running,
            "pending_tasks": tasks[:20],
            "reason": self.stop_reason,
        }

    def _log_start(self) -> None:
        loop = asyncio.get_running_loop()
        self.log.info(
            "service.starting",
            pid=os.getpid(),
            pid1=os.getpid() == 1,
            loop=f"{type(loop).__module__}.{type(loop).__name__}",
            stop_timeout=self.config.stop_timeout,
            delay=self.config.delay,
            margin=_rounded(self.config.effective_margin),
            reserve=_rounded(self.config.effective_reserve),
            signals=list(self.config.signals) if self._signals is not None else [],
        )
        for warning in self.config.fit_warnings():
            self.log.warning("budget.does_not_fit", problem=warning)
        shell = shell_pid1_warning()
        if shell is not None:
            self.log.warning("signals.shell_pid1", problem=shell)


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
    error is printed, naming the setting, and gives exit code 1.

    If threads that are not daemons are still running at the exit deadline (a blocking call in
    the default executor, say), the process exits without waiting for them, after flushing its
    output, rather than being SIGKILLed.

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


def _run_sync(runtime: Runtime, main: MainFunc | None) -> int:
    config = runtime.config
    try:
        factory = loop_factory(config.loop)
    except ConfigError as exc:
        print(f"graceful: configuration error: {exc}", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    if not structlog.is_configured() and config.log_format != "off":
        configure_logging(format=config.log_format, level=config.log_level)
    # Not asyncio.Runner: its close() waits for the default executor's threads without a
    # bound (Python 3.11), so one stuck thread would hold the exit until SIGKILL. The runtime
    # does Runner's other steps itself, bounded and reported (leftover tasks, async generators).
    runtime._owns_loop = True
    watchdog = runtime._watchdog = Watchdog(
        exit_code=int(ExitCode.OVERRAN),
        describe=runtime._describe_overrun,
        grace=min(config.effective_margin / 2, 0.25),
    )
    watchdog.start()
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(runtime.serve(main))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    _exit_now_if_threads_block(code, runtime)
    runtime.release()
    # The process is about to exit: spare the interpreter's final garbage collections a walk
    # over every object (a 4-5x shorter teardown after the stop; measured in BENCHMARKS.md).
    gc.freeze()
    return code


def _exit_now_if_threads_block(code: int, runtime: Runtime) -> None:
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not others:
        return
    deadline = time.monotonic() + (runtime.time_left() or 0.0)
    for thread in others:
        thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        runtime.log.warning("shutdown.threads_abandoned", threads=stuck, exit_code=code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _task_label(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{task.get_name()} ({where})"


def _stack(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(limit=8, file=out)
    return out.getvalue()


def _rounded(seconds: float) -> float:
    return round(seconds, 4)

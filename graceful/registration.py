"""What a service declares: startup steps, shutdown hooks, resources to close, servers, work.

:class:`Registrations` is the half of :class:`~graceful.runtime.Runtime` a service calls to
describe itself; the runtime is the half that runs it. Registration checks its arguments at
once (a wrong phase or a hook that is not callable is a ``ConfigError`` at the call site, not
a surprise during a stop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, overload

from graceful.background import capture_tasks
from graceful.draining import Drainable, DrainableServer, TaskSet
from graceful.exceptions import ConfigError, HookError
from graceful.hooks import HOOK_PHASES, Phase, hook_name
from graceful.lifecycle import Closers
from graceful.metrics import Metrics
from graceful.shutdown import Hooks
from graceful.status import LifecycleState

__all__ = ["Registrations"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registrations:
    """The registration API of a runtime (its base class).

    .. versionadded:: 0.1
    """

    state: LifecycleState
    metrics: Metrics
    log: Any

    def __init__(self) -> None:
        self._startup_steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self._hooks: Hooks = {phase: [] for phase in HOOK_PHASES if phase is not Phase.CLOSE}
        self._closers = Closers()
        self._drainables: list[Drainable] = []
        self._tasks = TaskSet("runtime")
        # Never-ending work the drain does not wait for: marked (create_task(background=True))
        # and the app's own, captured while it started (capture_background).
        self._background = TaskSet("background")
        self._app_background = TaskSet("app background")

    def _on_drainable_added(self, drainable: Drainable) -> None:
        """The runtime's part when a drainable arrives (during a stop: stop it at once)."""

    def _closing(self) -> bool:
        """True once nothing entered now would be closed any more."""
        return False

    def _phase_has_run(self, phase: Phase) -> bool:
        """True once the stop is past ``phase`` (its hooks were taken already)."""
        return False

    def on_startup(self, func: F) -> F:
        """Register ``async def func() -> None`` to run at startup, in registration order.

        Usable as a decorator.

        Raises:
            HookError: startup has already run (register before ``run``/``serve``; from
                ``main``, set the resource up directly, or use ``await runtime.enter(...)``).
        """
        self._check_startup_open(func)
        self._startup_steps.append((hook_name(func), func))
        return func

    def cleanup_context(self, func: F) -> F:
        """Register an async generator: before ``yield`` runs at startup, after it in ``close``.

        It closes in reverse order of registration, interleaved with ``close`` hooks and
        resources entered with ``enter``. Usable as a decorator.

        Raises:
            HookError: startup has already run (see ``on_startup``).
        """
        self._check_startup_open(func)
        name = hook_name(func)
        slot = self._closers.reserve(name)

        async def enter() -> None:
            await self._closers.enter(contextlib.asynccontextmanager(func)(), name=name, slot=slot)

        self._startup_steps.append((name, enter))
        return func

    async def enter(
        self, resource: AbstractAsyncContextManager[T], *, name: str | None = None
    ) -> T:
        """Enter an async context manager now and exit it in the ``close`` phase.

        From ``main`` or a startup step: ``store = await runtime.enter(DurableStore(path))``.
        Resources close last entered first, with ``close`` hooks and cleanup contexts.

        Raises:
            HookError: the ``close`` phase has begun; nothing would close the resource.

        .. versionadded:: 0.1
        """
        if self._closing():
            raise HookError(f"{hook_name(resource)} entered after the close phase began")
        return await self._closers.enter(resource, name=name or hook_name(resource))

    def _check_startup_open(self, func: object) -> None:
        # A startup step registered after startup would silently never run.
        if self.state is not LifecycleState.STARTING:
            raise HookError(
                f"{hook_name(func)} was registered as a startup step after startup finished "
                f"(state {self.state}): register it before run()/serve(), or from main enter "
                "the resource with `await runtime.enter(resource)`"
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
        """Register ``async def func() -> None`` (or a plain function) to run in a stop phase.

        Args:
            func: the hook; omit it to use this as a decorator with arguments.
            phase: ``unready``, ``stop_accept``, ``drain``, ``flush`` (default) or ``close``.
                ``close`` hooks run last registered first; the others in registration order.
            timeout: cap on this hook; it is also bounded by its phase and the exit deadline.
            name: name in logs and the report (the function's name by default).

        Raises:
            ConfigError: unknown phase, a negative timeout, or ``func`` is not callable.
        """
        try:
            hook_phase = Phase(phase)
        except ValueError:
            hook_phase = Phase.DELAY  # not a hook phase either: the same error below
        if hook_phase not in HOOK_PHASES:
            raise ConfigError(f"phase={phase!r}: hooks attach to one of {', '.join(HOOK_PHASES)}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} must be a positive number of seconds")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigError(f"on_shutdown({fn!r}): a hook must be callable")
            label = name or hook_name(fn)
            if self._phase_has_run(hook_phase):
                raise HookError(
                    f"{label} was registered for the {hook_phase} phase after that phase ran: "
                    "it would never run"
                )
            if hook_phase is Phase.CLOSE:
                self._closers.push(label, fn, timeout=timeout)
            else:
                self._hooks[hook_phase].append((label, fn, timeout))
            return fn

        return register if func is None else register(func)

    def add_drainable(self, drainable: Drainable) -> None:
        """Have the runtime stop, drain and abort a server or worker during the stop.

        Its in-flight count (and open connections, for a server that counts them) feed the
        ``graceful_inflight_requests`` and ``graceful_open_connections`` gauges. A drainable
        added after the listeners were closed (``main`` still starting servers when the stop
        began) stops accepting at once and is drained with the rest.
        """
        self._drainables.append(drainable)
        self.metrics.inflight.labels(server=drainable.name).set_function(drainable.inflight)
        if isinstance(drainable, DrainableServer):
            gauge = self.metrics.connections.labels(server=drainable.name)
            gauge.set_function(drainable.connection_count)
        self._on_drainable_added(drainable)

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, background: bool = False
    ) -> asyncio.Task[T]:
        """Start tracked work: by default awaited in ``drain`` and cancelled in ``cancel``.

        Args:
            coro: the work.
            name: the task's name, in logs and the report.
            background: the work never ends by itself (a poller, a refresh loop): the drain
                does not wait for it; it is cancelled right after the drain, before the
                ``flush`` hooks, and logged at info as ``tasks.background_cancelled``, without
                counting as cut work.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        (self._background if background else self._tasks).add(task)
        task.add_done_callback(self._log_failure)
        return task

    def capture_background(self) -> contextlib.AbstractContextManager[None]:
        """Treat the tasks the code in this block starts as the app's background work.

        For a server integration: the app's startup (an ASGI lifespan startup, aiohttp's
        ``on_startup`` and cleanup contexts) runs inside it. Such tasks that are still running
        after the ``close`` phase (the app's own shutdown did not end them) are cancelled and
        logged at info as ``tasks.background_cancelled``; unlike a task left running by a
        request handler, they do not count as cut work (exit code 3).

        .. versionadded:: 0.1
        """
        return capture_tasks(self._app_background)

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("task.failed", task=task.get_name(), error=repr(exc), exc_info=exc)

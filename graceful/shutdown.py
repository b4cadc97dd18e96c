"""One stop, phase by phase, under one budget.

The runtime decides *when* a stop begins (a signal, ``request_stop``, a crash) and what takes
part in it (drainables, tracked tasks, hooks, closers); a :class:`Shutdown` runs it: the seven
phases in order, each bounded by its absolute deadline, with every outcome handed to the
:class:`~graceful.recorder.ShutdownRecorder`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from graceful.background import cancel_background
from graceful.budget import Budget
from graceful.config import Config
from graceful.draining import Drainable, TaskSet
from graceful.hooks import HookOutcome, Outcome, Phase, run_hook
from graceful.lifecycle import Closers
from graceful.recorder import ShutdownRecorder
from graceful.runner import cancel_leftovers

__all__ = ["Hooks", "Shutdown", "StopResult"]

#: A phase's hooks: (name, function, timeout), in registration order.
Hooks = dict[Phase, list[tuple[str, Callable[[], object], float | None]]]


@dataclass(frozen=True, slots=True)
class StopResult:
    """What the phases did, for the exit code and the report."""

    drained: bool
    cut: int


class Shutdown:
    """Runs the phases of one stop.

    Args:
        config: the runtime's settings (hook timeout).
        budget: the deadlines, planned from the moment the stop began.
        recorder: where outcomes and phase times go.
        drainables: the servers; read live, so one added during the stop takes part.
        tasks: tracked work (and ``main``), awaited in drain, cancelled in cancel.
        background: work marked as never ending, cancelled (not cut) right after the drain.
        app_background: tasks the app started while it started, cancelled (not cut) after
            ``close``, once the app's own shutdown had its chance to end them.
        hooks: shutdown hooks by phase (``close`` hooks live in ``closers``).
        closers: the LIFO stack unwound in ``close``.
        force: set by a second signal: skip the rest of the drain.
        owns_loop: the runtime owns the loop, so leftovers are its to cancel.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        config: Config,
        budget: Budget,
        recorder: ShutdownRecorder,
        drainables: Sequence[Drainable],
        tasks: TaskSet,
        background: TaskSet,
        app_background: TaskSet,
        hooks: Hooks,
        closers: Closers,
        force: asyncio.Event,
        owns_loop: bool,
    ) -> None:
        self.config = config
        self.budget = budget
        self.recorder = recorder
        self.log = recorder.log
        self.drainables = drainables
        self.tasks = tasks
        self.background = background
        self.app_background = app_background
        self.hooks = hooks
        self.closers = closers
        self.force = force
        self.owns_loop = owns_loop
        self.phase: Phase | None = None
        self.running_hooks: list[str] = []

    async def run(self, before_close: Callable[[], Any]) -> StopResult:
        """Run every phase; ``before_close`` runs last in ``close`` (reaper, admin server)."""
        loop = asyncio.get_running_loop()
        budget = self.budget
        with self._phase(Phase.UNREADY):
            await self.run_hooks(Phase.UNREADY, budget.drain_end)
        with self._phase(Phase.DELAY), contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(budget.delay_end):
                await self.force.wait()
        with self._phase(Phase.STOP_ACCEPT):
            for drainable in list(self.drainables):
                await self.stop_accepting(drainable)
            await self.run_hooks(Phase.STOP_ACCEPT, budget.drain_end)
        with self._phase(Phase.DRAIN):
            # Drain hooks (telling websockets and streams to go away) run beside the drain and
            # are awaited to the end, unless a second signal cuts the drain short.
            drain_hooks = loop.create_task(self.run_hooks(Phase.DRAIN, budget.drain_end))
            drained = await self._drain(budget.drain_end)
            if self.force.is_set():
                budget = self.budget = budget.skip_to_flush(loop.time())
                drain_hooks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain_hooks
        with self._phase(Phase.CANCEL):
            self.recorder.background += await cancel_background(
                self.background, budget.cancel_end, self.log
            )
            cut = 0 if drained else await self._cancel(budget.cancel_end)
        with self._phase(Phase.FLUSH):
            await self.run_hooks(Phase.FLUSH, budget.flush_end)
        with self._phase(Phase.CLOSE):
            for closer in self.closers.unwind():
                assert closer.func is not None
                await self.run_hook(
                    closer.func, closer.name, Phase.CLOSE, closer.timeout, budget.exit_at
                )
            await before_close()
            if self.owns_loop:
                # The cancel phase's grace, not the whole reserve: one that swallows the
                # cancellation must not take the time of what still has to run.
                grace = budget.cancel_end - budget.drain_end
                until = min(budget.exit_at, loop.time() + grace)
                self.recorder.background += await cancel_background(
                    self.app_background, until, self.log
                )
                leftovers, generators_closed = await cancel_leftovers(budget.exit_at, self.log)
                self.recorder.leftovers += leftovers
                cut += len(leftovers) + (0 if generators_closed else 1)
        self.phase = None
        return StopResult(drained=drained, cut=cut)

    async def stop_accepting(self, drainable: Drainable) -> None:
        """Close one drainable's listeners, bounded by the drain deadline."""
        name = f"{drainable.name}.stop_accepting"
        await self.run_hook(
            drainable.stop_accepting, name, Phase.STOP_ACCEPT, None, self.budget.drain_end
        )

    def inflight(self) -> int:
        """Units of work in flight: in the drainables, plus tracked tasks still running."""
        return sum(d.inflight() for d in self.drainables) + len(self.work_tasks())

    def work_tasks(self) -> set[asyncio.Task[Any]]:
        return {task for task in self.tasks if not task.done()}

    def time_left(self) -> float:
        return max(self.budget.exit_at - asyncio.get_running_loop().time(), 0.0)

    @contextlib.contextmanager
    def _phase(self, phase: Phase) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        self.phase = phase
        started = loop.time()
        self.log.debug("phase.started", phase=phase, time_left_s=self.time_left())
        with structlog.contextvars.bound_contextvars(phase=str(phase)):
            try:
                yield
            finally:
                seconds = loop.time() - started
                self.recorder.phase(phase, seconds, self.budget, self.time_left())

    async def _drain(self, deadline: float) -> bool:
        """Wait for drainables, the main task and tracked tasks; True if all finished.

        Drainables and tracked tasks are collected again after every wake-up, so work (or a
        server) started during the drain is awaited too.
        """
        loop = asyncio.get_running_loop()
        drains: dict[int, asyncio.Task[None]] = {}
        force = loop.create_task(self.force.wait())
        try:
            async with asyncio.timeout_at(deadline):
                while not self.force.is_set():
                    for d in self.drainables:
                        if id(d) not in drains:
                            drains[id(d)] = loop.create_task(d.drain(), name=f"drain {d.name}")
                    pending = {t for t in drains.values() if not t.done()} | self.work_tasks()
                    if not pending:
                        break
                    await asyncio.wait(pending | {force}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            force.cancel()
        unfinished = {t for t in drains.values() if not t.done()}
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=0.1)
        drained = not unfinished and not self.work_tasks()
        if not drained:
            self.log.warning(
                "drain.incomplete",
                reason="second signal" if self.force.is_set() else "drain deadline",
                inflight=self.inflight(),
            )
        return drained

    async def _cancel(self, deadline: float) -> int:
        cut = 0
        for drainable in self.drainables:
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(deadline):
                    cut += await drainable.abort()
        cut += len(self.work_tasks())
        await self.tasks.cancel_all(deadline)
        if cut:
            self.recorder.metrics.cancelled.inc(cut)
            self.recorder.metrics.overruns.inc()
            self.log.warning("work.cancelled", count=cut)
        return cut

    async def run_hooks(self, phase: Phase, deadline: float) -> None:
        """Run a phase's hooks in order; a second signal's cancellation marks the rest skipped."""
        hooks = self.hooks[phase]
        for i, (name, func, timeout) in enumerate(hooks):
            try:
                await self.run_hook(func, name, phase, timeout, deadline)
            except asyncio.CancelledError:
                for skipped, _, _ in hooks[i:]:
                    outcome = HookOutcome(skipped, phase, Outcome.SKIPPED, 0.0, "second signal")
                    self.recorder.hook(outcome)
                raise

    async def run_hook(
        self,
        func: Callable[[], object],
        name: str,
        phase: Phase,
        timeout: float | None,
        deadline: float,
    ) -> None:
        """Run one hook under its own timeout (or the default) and the phase's deadline."""
        loop = asyncio.get_running_loop()
        timeout = timeout if timeout is not None else self.config.hook_timeout
        if timeout is not None:
            deadline = min(deadline, loop.time() + timeout)
        self.running_hooks.append(name)
        try:
            outcome = await run_hook(func, name=name, phase=phase, deadline=deadline)
        finally:
            self.running_hooks.remove(name)
        self.recorder.hook(outcome)

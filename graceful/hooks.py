"""Startup and shutdown hooks, isolated from each other and bounded by deadlines.

A hook that raises is logged and the next one runs; a hook that hangs is cancelled at its
deadline, and one that swallows the cancellation is abandoned after a short grace, so no hook
can stop the rest of the shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from graceful.exceptions import HookError

__all__ = ["HookOutcome", "Outcome", "Phase", "hook_name", "run_hook"]

HookFunc = Callable[[], object]

#: How long a cancelled hook may take to unwind before it is abandoned.
_ABANDON_GRACE = 0.05
#: A hook that returns this much after its deadline blocked the loop (asyncio.wait would
#: otherwise have cut it); below it, the lateness is scheduling noise.
_LATE_TOLERANCE = 0.05


class Phase(StrEnum):
    """The phases of a shutdown, in order.

    .. versionadded:: 0.1
    """

    UNREADY = "unready"
    DELAY = "delay"
    STOP_ACCEPT = "stop_accept"
    DRAIN = "drain"
    CANCEL = "cancel"
    FLUSH = "flush"
    CLOSE = "close"


#: Phases a shutdown hook can be attached to.
HOOK_PHASES = (Phase.UNREADY, Phase.STOP_ACCEPT, Phase.DRAIN, Phase.FLUSH, Phase.CLOSE)


class Outcome(StrEnum):
    """How one hook ended."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    """Never ran: a second signal cut its phase short."""


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """What happened when a hook ran."""

    name: str
    phase: Phase
    outcome: Outcome
    seconds: float
    error: str | None = None


async def run_hook(
    func: Callable[[], object], *, name: str, phase: Phase, deadline: float | None
) -> HookOutcome:
    """Run one hook until it finishes or the loop-time ``deadline`` passes.

    ``func`` may be ``async def`` or a plain function (``executor.shutdown``, ``server.close``):
    a plain one runs on the loop thread, and if it returns an awaitable that is awaited too.
    A hook that blocks the loop past its deadline is reported as timed out even though it
    finished, because the stop's other deadlines were lost while it ran.

    Never raises (except when the caller itself is cancelled): the outcome says what happened.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        result = func()
    except asyncio.CancelledError:
        # Raised by the hook's own code (a cancelled future's result): the caller cannot be
        # cancelled inside a plain call, only at an await.
        return _ended(name, phase, started, deadline, error="cancelled")
    except BaseException as exc:
        return _ended(name, phase, started, deadline, error=_describe(exc))
    if not inspect.isawaitable(result):
        return _ended(name, phase, started, deadline)
    task = asyncio.ensure_future(_guarded(result))
    timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=_ABANDON_GRACE)
        if not task.done():
            task.add_done_callback(_consume_result)
        return HookOutcome(
            name, phase, Outcome.TIMED_OUT, time.perf_counter() - started, "cut at its deadline"
        )
    if task.cancelled():
        return _ended(name, phase, started, deadline, error="cancelled")
    error = task.exception()
    return _ended(name, phase, started, deadline, error=None if error is None else _describe(error))


async def _guarded(awaitable: Awaitable[object]) -> object:
    try:
        return await awaitable
    except SystemExit as exc:
        # A task that raises SystemExit or KeyboardInterrupt takes the event loop down with it.
        raise HookError(f"the hook called sys.exit({exc.code!r})") from None
    except KeyboardInterrupt:
        raise HookError("the hook raised KeyboardInterrupt") from None


def _ended(
    name: str, phase: Phase, started: float, deadline: float | None, *, error: str | None = None
) -> HookOutcome:
    seconds = time.perf_counter() - started
    if error is not None:
        return HookOutcome(name, phase, Outcome.FAILED, seconds, error)
    # Only the time the hook itself ran counts: one started after its deadline (the phase had
    # no time left) and done at once blocked nothing.
    late = 0.0 if deadline is None else min(asyncio.get_running_loop().time() - deadline, seconds)
    if late > _LATE_TOLERANCE:
        return HookOutcome(
            name,
            phase,
            Outcome.TIMED_OUT,
            seconds,
            f"blocked the event loop until {late:.3f} s past its deadline",
        )
    return HookOutcome(name, phase, Outcome.OK, seconds)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _consume_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _name_of(func: object) -> str:
    if isinstance(func, functools.partial):
        return f"partial({_name_of(func.func)})"
    if not hasattr(func, "__qualname__"):  # an instance (a resource entered with enter())
        func = type(func)
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{name}" if module and module != "__main__" else str(name)


def hook_name(func: object) -> str:
    """A readable name for a hook, for logs and the report."""
    return _name_of(func)

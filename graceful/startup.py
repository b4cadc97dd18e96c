"""Startup: the steps a service takes before it serves, aborted cleanly by a stop signal.

Steps run in registration order. A stop requested while they run cancels them and the runtime
goes straight to its stop, which closes whatever had started; ``main`` never runs against
resources whose setup was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from graceful.config import ENV_VARS, Config
from graceful.recorder import rounded
from graceful.signals import shell_pid1_warning

__all__ = ["StartOutcome", "StartupStep", "log_starting", "run_startup", "unknown_variables"]

#: ``GRACEFUL_*`` names read by something other than ``Config`` and ``graceful serve``: the
#: worker's index, the supervisor's, the harness's, the Swarm test's and the test images'.
OTHER_VARIABLES = frozenset(
    {
        "GRACEFUL_WORKER",
        "GRACEFUL_NO_WORKERS_TIMEOUT",
        "GRACEFUL_HARNESS_RUN_ID",
        "GRACEFUL_IMAGE",
        "GRACEFUL_LB_PORT",
        "GRACEFUL_SWARM_LONG",
        "GRACEFUL_TEST_BASE_IMAGE",
    }
)

#: A named startup step.
StartupStep = tuple[str, Callable[[], Awaitable[object]]]


class StartOutcome(StrEnum):
    """How startup ended."""

    STARTED = "started"
    FAILED = "failed"
    ABORTED = "aborted"


async def run_startup(
    steps: Sequence[StartupStep], stop_requested: asyncio.Event, log: Any
) -> StartOutcome:
    """Run ``steps`` in order until done, one fails, or a stop is requested."""
    loop = asyncio.get_running_loop()
    startup = loop.create_task(_run_steps(steps, log))
    stop = loop.create_task(stop_requested.wait())
    try:
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        startup.cancel()  # our caller is cancelled: so is the step it was waiting for
        raise
    finally:
        stop.cancel()
    if not startup.done():
        startup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await startup
        return StartOutcome.ABORTED
    if startup.cancelled():  # a step raised CancelledError by itself (a cancelled future)
        log.error("startup.failed", error="a startup step was cancelled")
        return StartOutcome.FAILED
    try:
        startup.result()
    except Exception as exc:
        log.error("startup.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return StartOutcome.FAILED
    if stop_requested.is_set():  # it came with the last step (or before the first): no main
        return StartOutcome.ABORTED
    return StartOutcome.STARTED


async def _run_steps(steps: Sequence[StartupStep], log: Any) -> None:
    for name, step in steps:
        started = time.perf_counter()
        await step()
        log.info("startup.step", hook=name, seconds=rounded(time.perf_counter() - started))


def log_starting(log: Any, config: Config, *, signals_on: bool) -> None:
    """The ``service.starting`` line, then what an operator should know before a stop."""
    loop = asyncio.get_running_loop()
    log.info(
        "service.starting",
        pid=os.getpid(),
        pid1=os.getpid() == 1,
        loop=f"{type(loop).__module__}.{type(loop).__name__}",
        stop_timeout=config.stop_timeout,
        delay=config.delay,
        margin=rounded(config.effective_margin),
        reserve=rounded(config.effective_reserve),
        signals=list(config.signals) if signals_on else [],
    )
    for warning in config.fit_warnings():
        log.warning("budget.does_not_fit", problem=warning)
    shell = shell_pid1_warning()
    if shell is not None:
        log.warning("signals.shell_pid1", problem=shell)
    if os.environ.get("GRACEFUL_WORKER", "0") == "0":  # once, not once per worker
        for name, near in unknown_variables(os.environ).items():
            log.warning(
                "config.unknown_variable",
                name=name,
                did_you_mean=near,
                problem=f"{name} is not a graceful setting: it changes nothing",
            )


def unknown_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """``GRACEFUL_*`` variables graceful does not read (a typo: ``GRACEFUL_STOP_TIMOUT``),
    each with the known name closest to it, if one is close.

    A warning, not an error: an app may use the prefix for its own settings.
    """
    try:
        from graceful.serve.options import SERVE_ENV_VARS
    except ImportError:  # the package no longer readable (privileges dropped after import)
        SERVE_ENV_VARS = {}

    known = {*ENV_VARS.values(), *SERVE_ENV_VARS.values(), *OTHER_VARIABLES}
    found: dict[str, str | None] = {}
    for name in sorted(environ):
        if name.startswith("GRACEFUL_") and name not in known:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            found[name] = near[0] if near else None
    return found

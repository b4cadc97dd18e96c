"""Helpers for testing services built on graceful (public, documented in the README)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from graceful.config import Config
from graceful.runtime import MainFunc, Runtime, bind_current, unbind_current

__all__ = ["run_runtime"]


@contextlib.asynccontextmanager
async def run_runtime(
    config: Config | None = None,
    *,
    main: MainFunc | None = None,
    runtime: Runtime | None = None,
) -> AsyncIterator[Runtime]:
    """Serve a runtime in the current event loop for the duration of a ``with`` block.

    Yields once startup has finished; on leaving the block the stop sequence runs (unless the
    test already stopped it) and is awaited, so ``runtime.exit_code`` is set afterwards.
    Signal handlers are not installed unless ``config`` asks for them, and metrics go to a
    fresh registry unless you pass your own runtime.

    Args:
        config: settings; defaults to ``Config(handle_signals=False)``.
        main: the service's ``async def main(runtime)``.
        runtime: a runtime you built (with its hooks registered) to use instead.

    .. versionadded:: 0.1
    """
    if runtime is None:
        config = Config(handle_signals=False) if config is None else config
        runtime = Runtime(config, registry=CollectorRegistry())
    serving = asyncio.get_running_loop().create_task(runtime.serve(main))
    waiter = asyncio.ensure_future(runtime.wait_serving())
    await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    # The test's body stands where main would: current_runtime() works there, and in the tasks
    # it starts (an ASGI request made through httpx's ASGITransport, say).
    token = bind_current(runtime)
    try:
        yield runtime
    finally:
        unbind_current(token)
        runtime.request_stop("test finished")
        await serving

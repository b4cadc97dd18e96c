"""graceful.testing: the helpers a service's own tests use."""

from __future__ import annotations

import asyncio

import pytest

from graceful import Config, Runtime, current_runtime
from graceful.testing import run_runtime


async def test_current_runtime_works_in_the_body_and_its_tasks() -> None:
    """A handler under test calls current_runtime(): it must find the runtime under test,
    directly and in tasks the test starts (httpx's ASGITransport runs the app in the test's
    context). Control: outside the block it raises, as it does outside any runtime."""
    seen: list[Runtime] = []

    async def handler() -> None:
        seen.append(current_runtime())

    async with run_runtime(Config(handle_signals=False)) as runtime:
        seen.append(current_runtime())
        await asyncio.create_task(handler())
        await runtime.create_task(handler())
    assert seen == [runtime] * 3
    with pytest.raises(RuntimeError, match="outside a running graceful runtime"):
        current_runtime()

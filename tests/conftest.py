"""Shared test setup: in-process async tests run on both asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

# These modules drive services in child processes (which pick their own loop, and are
# parametrized over it where it matters); running the test side twice would only double time.
CHILD_PROCESS_MODULES = {
    "test_drain_http",
    "test_drain_streams",
    "test_state_faults",
    "test_state_kill",
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rsplit(".", 1)[-1] in CHILD_PROCESS_MODULES:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

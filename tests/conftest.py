"""Shared test setup: in-process async tests run on both asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest
import uvloop
from hypothesis import settings

# In CI the property tests replay the same examples every run (a gate must not turn red on a
# newly drawn example nobody changed code for); locally they explore, and what they find is
# kept in .hypothesis/ and fixed. `make fuzz` runs the long profile.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)

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

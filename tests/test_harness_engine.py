"""graceful.harness.engine without an engine: connecting says how to get one."""

from __future__ import annotations

import time

import pytest


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from graceful.harness.engine import EngineUnavailable, connect

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="make engine"):
        connect(timeout=5)
    assert time.monotonic() - started < 60  # a hang guard, not a speed claim

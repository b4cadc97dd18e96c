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


@pytest.mark.parametrize(
    ("docker_host", "remote"),
    [
        ("unix:///var/run/docker.sock", None),
        ("", None),
        ("tcp://127.0.0.1:2375", None),
        ("tcp://localhost:2376", None),
        ("tcp://[::1]:2375", None),
        ("tcp://10.1.2.3:2375", "10.1.2.3"),
        ("tcp://docker:2375", "docker"),
        ("ssh://me@build-host", "build-host"),
        ("ssh://me@localhost", "localhost"),  # ports published over there, not here
    ],
)
def test_remote_engines_are_recognised(docker_host: str, remote: str | None) -> None:
    from graceful.harness.engine import remote_engine

    assert remote_engine(docker_host) == remote


def test_a_remote_engine_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness reaches containers on 127.0.0.1: with a remote engine it used to report
    every scenario "not ready" after a minute each. Now it says why, without connecting."""
    from graceful.harness.engine import EngineUnavailable, connect

    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")  # TEST-NET: never answers
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"another machine \(192\.0\.2\.1\).*127\.0\.0\.1"):
        connect(timeout=5)
    assert time.monotonic() - started < 5  # refused before any connection attempt

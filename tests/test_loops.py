"""``graceful.loops.loop_factory``: a loop factory by name, never a policy."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import uvloop

from graceful.loops import loop_factory
from tests.support import ROOT


def make_and_close(factory: Callable[[], asyncio.AbstractEventLoop]) -> type:
    loop = factory()
    try:
        return type(loop)
    finally:
        loop.close()


def test_asyncio_is_the_standard_loop() -> None:
    factory = loop_factory("asyncio")
    assert factory is asyncio.new_event_loop
    assert not issubclass(make_and_close(factory), uvloop.Loop)


@pytest.mark.parametrize("name", ["auto", "uvloop"])
def test_uvloop_when_installed(name: str) -> None:
    factory = loop_factory(name)
    assert factory is uvloop.new_event_loop
    assert issubclass(make_and_close(factory), uvloop.Loop)


def test_default_is_auto() -> None:
    assert loop_factory() is loop_factory("auto")


def test_factory_does_not_touch_the_event_loop_policy() -> None:
    policy = asyncio.get_event_loop_policy()
    for name in ("auto", "asyncio", "uvloop"):
        make_and_close(loop_factory(name))
    assert asyncio.get_event_loop_policy() is policy
    assert not isinstance(policy, uvloop.EventLoopPolicy)


# Without uvloop (a child process where importing it fails, as when it is not installed).
WITHOUT_UVLOOP = textwrap.dedent(
    """
    import asyncio
    import sys

    sys.modules["uvloop"] = None  # "import uvloop" now raises ImportError
    from graceful.exceptions import ConfigError
    from graceful.loops import loop_factory

    assert loop_factory("auto") is asyncio.new_event_loop
    try:
        loop_factory("uvloop")
    except ConfigError as exc:
        print("ConfigError:", exc)
    """
)


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVLOOP],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ConfigError: GRACEFUL_LOOP='uvloop' but uvloop is not installed")
    assert "pip install 'graceful-stop[uvloop]'" in done.stdout

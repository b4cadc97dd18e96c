"""pytest plugin: chaos tests against real containers on a real Docker engine.

Installed with ``graceful-stop`` (entry point ``pytest11``), so it loads in every pytest run:
it imports nothing heavy until a fixture is used, and never fails a run that does not use it.

Fixtures:

- ``graceful_engine`` (session): the connected engine; everything it creates is removed at
  the end of the session. Without an engine the test is skipped with a message saying how to
  get one, but when ``CI=true`` it fails instead.
- ``graceful_image`` (session): the image under test, from ``--graceful-image`` or
  ``GRACEFUL_IMAGE``; override the fixture to build one.
- ``graceful_settings``: the :class:`~graceful.harness.context.Settings` (stop timeout from
  ``--graceful-stop-timeout``, the contract's ports and paths); override to change them.
- ``graceful_harness``: a :class:`GracefulHarness` to run scenarios and drive containers.
- ``graceful_container``: shortcut, an async factory that starts the image and returns a
  ready :class:`~graceful.harness.context.Service`.

Marker ``graceful_chaos``: the test needs a Docker engine (skipped without one, a failure when
``CI=true``), whether or not it uses the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo, StopResult
    from graceful.harness.context import Context, Service, Settings
    from graceful.harness.engine import Engine
    from graceful.harness.load import Ledger, LoadClient
    from graceful.harness.report import ScenarioResult
    from graceful.harness.scenarios import Scenario

__all__ = ["GracefulHarness"]

_ENGINE_KEY = pytest.StashKey["Engine | str"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("graceful", "graceful container harness")
    group.addoption(
        "--graceful-image",
        default=None,
        metavar="IMAGE",
        help="image the graceful_* fixtures test (default: $GRACEFUL_IMAGE)",
    )
    group.addoption(
        "--graceful-stop-timeout",
        type=int,
        default=None,
        metavar="S",
        help="docker stop -t for graceful_* fixtures (default: 10)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "graceful_chaos: needs a Docker engine (skipped without one, a failure when CI=true)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("graceful_chaos") is not None:
        _engine(item.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    engine = config.stash.get(_ENGINE_KEY, None)
    if engine is not None and not isinstance(engine, str):
        engine.close()


def in_ci() -> bool:
    """Whether the run is in CI, where a missing engine is a failure, never a skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _engine(config: pytest.Config) -> Engine:
    """The session's engine, connected once; skip (or fail in CI) without one."""
    cached = config.stash.get(_ENGINE_KEY, None)
    if cached is None:
        from graceful.harness.engine import EngineUnavailable, connect

        try:
            cached = connect()
        except EngineUnavailable as exc:
            cached = str(exc)
        config.stash[_ENGINE_KEY] = cached
    if isinstance(cached, str):
        if in_ci():
            pytest.fail(f"CI=true and {cached}", pytrace=False)
        pytest.skip(cached)
    return cached


@pytest.fixture(scope="session")
def graceful_engine(request: pytest.FixtureRequest) -> Engine:
    """The Docker engine; what it creates is removed when the session ends."""
    return _engine(request.config)


@pytest.fixture(scope="session")
def graceful_image(request: pytest.FixtureRequest, graceful_engine: Engine) -> str:
    """The image under test: ``--graceful-image`` or ``GRACEFUL_IMAGE``; override to build."""
    ref = request.config.getoption("--graceful-image") or os.environ.get("GRACEFUL_IMAGE")
    if not ref:
        pytest.skip("no image under test: pass --graceful-image IMAGE or set GRACEFUL_IMAGE")
    return str(ref)


@pytest.fixture
def graceful_settings(request: pytest.FixtureRequest) -> Settings:
    """Stop timeout and the workload's ports/paths; override the fixture to change them."""
    from graceful.harness.context import Settings

    timeout = request.config.getoption("--graceful-stop-timeout")
    return Settings(stop_timeout=timeout) if timeout else Settings()


@pytest.fixture
def graceful_harness(
    graceful_engine: Engine, graceful_image: str, graceful_settings: Settings
) -> Iterator[GracefulHarness]:
    """A handle to run scenarios against the image and drive its containers."""
    harness = GracefulHarness(graceful_engine, graceful_image, graceful_settings)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def graceful_container(
    graceful_harness: GracefulHarness,
) -> Callable[..., Awaitable[Service]]:
    """``await graceful_container()`` starts the image and returns it once ready."""
    return graceful_harness.start


class GracefulHarness:
    """Runs scenarios and drives containers of one image, from a test.

    Every method that talks to a container is a coroutine (use an async test). Containers and
    volumes are removed when the test ends.

    Example::

        async def test_stops_cleanly(graceful_harness):
            result = await graceful_harness.run("stop-under-load")
            assert result.passed, result.findings

    .. versionadded:: 0.1
    """

    def __init__(self, engine: Engine, image: str, settings: Settings) -> None:
        self.engine = engine
        self.image_ref = image
        self.settings = settings
        self._image: ImageInfo | None = None
        self._contexts: list[Context] = []

    @property
    def image(self) -> ImageInfo:
        """The image's inspected config (entrypoint, cmd, stop signal)."""
        if self._image is None:
            self._image = self.engine.image(self.image_ref)
        return self._image

    def context(self, name: str = "test") -> Context:
        """A scenario context (see :class:`~graceful.harness.context.Context`) whose
        containers are removed when the test ends."""
        from graceful.harness.context import Context

        ctx = Context(self.engine, self.image, self.settings, scenario=name)
        self._contexts.append(ctx)
        return ctx

    @property
    def _ctx(self) -> Context:
        return self._contexts[0] if self._contexts else self.context()

    async def run(self, scenario: str | Scenario) -> ScenarioResult:
        """Run one scenario (by name, or a configured instance) and return its verdict."""
        from graceful.harness.scenarios import make_scenarios, run_scenarios

        chosen = make_scenarios([scenario])[0] if isinstance(scenario, str) else scenario
        report = await run_scenarios(self.engine, self.image, [chosen], self.settings)
        return report.scenarios[0]

    async def start(self, *, volume: str | None = None, ready: bool = True) -> Service:
        """Start a container of the image (on a new volume unless one is given)."""
        return await self._ctx.start(volume, ready=ready)

    async def stop(self, service: Service) -> StopResult:
        """``docker stop -t <stop timeout>``, timed."""
        return await self._ctx.stop(service)

    async def kill(self, service: Service, sig: str = "SIGKILL") -> bool:
        """``docker kill --signal sig``; False when it had already exited."""
        return await self._ctx.kill(service, sig)

    async def wait_exit(
        self, service: Service, started: float, timeout: float = 60.0
    ) -> StopResult | None:
        """Wait for the exit, timed from ``started`` (``time.monotonic()``)."""
        return await self._ctx.wait_exit(service, started, timeout)

    def load(self, service: Service, ledger: Ledger | None = None) -> LoadClient:
        """A load client (an async context manager) for the service, recording into ``ledger``."""
        from graceful.harness.load import Ledger

        return self._ctx.client(service, ledger if ledger is not None else Ledger())

    async def stored_ids(self, volume: str) -> set[str]:
        """Start a new container on ``volume`` and return the item ids it holds."""
        return await self._ctx.stored_after_restart(volume)

    async def logs(self, service: Service) -> str:
        """The container's output so far."""
        return await self._ctx.logs(service)

    def close(self) -> None:
        """Remove the containers and volumes this harness started."""
        for ctx in self._contexts:
            ctx.remove_now()
        self._contexts.clear()

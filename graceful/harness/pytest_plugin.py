"""pytest plugin: chaos tests against real containers on a real Docker engine.

Installed with ``graceful-stop`` (entry point ``pytest11``), so it loads in every pytest run:
it imports nothing heavy until a fixture is used, and never fails a run that does not use it
(a run whose rootdir has a ``[tool.graceful.harness]`` table, or that passes a
``--graceful-*`` option, uses it: a mistake there stops the run at startup).

Fixtures:

- ``graceful_engine`` (session): the connected engine; everything it creates is removed at
  the end of the session. Without an engine the test is skipped with a message saying how to
  get one, but when ``CI=true`` it fails instead.
- ``graceful_config`` (session): the app's description, a
  :class:`~graceful.harness.settings.HarnessConfig`: the ``[tool.graceful.harness]`` table of
  the rootdir's ``pyproject.toml`` (or ``--graceful-config PATH``), each key overridden by its
  ``--graceful-<key>`` option (``--graceful-work-url``, ``--graceful-admin-port``, ...). A bad
  key or option fails the run at startup, naming it.
- ``graceful_image`` (session): the image under test: ``--graceful-image``, else
  ``GRACEFUL_IMAGE``, else the table's ``image``; built once per session when the table (or
  ``--graceful-build``) gives a build context. An image named by the option or
  ``GRACEFUL_IMAGE`` is used as it is: the table's ``build`` is then dropped, never run to
  overwrite that tag.
- ``graceful_settings``: the :class:`~graceful.harness.context.Settings` the configuration
  describes (stop timeout, the contract's ports, paths and templates).
- ``graceful_harness``: a :class:`GracefulHarness` to run scenarios and drive containers.
- ``graceful_container``: shortcut, an async factory that starts the image and returns a
  ready :class:`~graceful.harness.context.Service`.

Marker ``graceful_chaos``: the test needs a Docker engine (skipped without one, a failure when
``CI=true``), whether or not it uses the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo, StopResult
    from graceful.harness.context import Context, Service, Settings
    from graceful.harness.engine import Engine
    from graceful.harness.load import Ledger, LoadClient
    from graceful.harness.report import ScenarioResult
    from graceful.harness.scenarios import Scenario
    from graceful.harness.settings import HarnessConfig

__all__ = ["GracefulHarness"]

_ENGINE_KEY = pytest.StashKey["Engine | str"]()
_CONFIG_KEY = pytest.StashKey["HarnessConfig"]()
# The table's keys the plugin takes as options (--graceful-<key>), with their help.
_OPTIONS = {
    "image": ("IMAGE", "image under test (default: $GRACEFUL_IMAGE, then the table's image)"),
    "build": ("PATH", "build the image from this context first, once per session"),
    "dockerfile": ("FILE", "Dockerfile for the build, relative to its context"),
    "port": ("PORT", "HTTP port in the container (8080)"),
    "admin_port": ("PORT|off", "admin port (graceful's /readyz) in the container (9090)"),
    "work_url": ("TEMPLATE", "GET target that takes a given time: /slow?s={seconds}"),
    "work_path": ("PATH", "shorthand for a work URL PATH?ms={ms}"),
    "items_path": ("PATH", "POST/GET durable items (/items); empty for none"),
    "write": ("TEMPLATE", 'write template: POST /orders {"id": "{id}"}'),
    "read": ("TEMPLATE", "read template (2xx stored, 404 not): GET /orders/{id}"),
    "ready_path": ("[main:|admin:]PATH", "readiness path (graceful's /readyz on the admin port)"),
    "stream_path": ("PATH", "a streaming response that stays open (/stream); empty for none"),
    "volume_path": ("PATH", "where the state volume is mounted (/data); empty for none"),
    "report_event": ("EVENT", "log event summarising a stop (shutdown.report)"),
    "stop_timeout": ("S", "docker stop -t, also GRACEFUL_STOP_TIMEOUT (10)"),
    "startup_timeout": ("S", "seconds a container may take to become ready (60)"),
    "probe_image": ("IMAGE", "image with python3 for the connection prober"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("graceful", "graceful container harness")
    group.addoption(
        "--graceful-config",
        default=None,
        metavar="PATH",
        help="pyproject.toml whose [tool.graceful.harness] table describes the app under test "
        "(default: the rootdir's); each --graceful-<key> option overrides its key",
    )
    for key, (metavar, text) in _OPTIONS.items():
        group.addoption(f"--graceful-{key.replace('_', '-')}", metavar=metavar, help=text)
    group.addoption(
        "--graceful-env",
        action="append",
        metavar="KEY=VALUE",
        help="extra environment for the service (repeatable)",
    )
    group.addoption(
        "--graceful-init",
        action="store_true",
        default=None,
        help="run the service under docker's --init",
    )
    group.addoption(
        "--graceful-no-init",
        dest="graceful_init",
        action="store_false",
        default=None,
        help="run it without (turns the table's init = true off)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "graceful_chaos: needs a Docker engine (skipped without one, a failure when CI=true)",
    )
    # A bad table or option fails the run here, at startup, naming it; a run that has
    # neither does no work at all.
    wanted = config.getoption("--graceful-config") is not None or any(
        config.getoption(f"--graceful-{k.replace('_', '-')}") is not None
        for k in (*_OPTIONS, "env", "init")
    )
    pyproject = config.rootpath / "pyproject.toml"
    if wanted or _mentions_graceful(pyproject):
        from graceful.exceptions import ConfigError

        try:
            config.stash[_CONFIG_KEY] = _load_config(config)
        except ConfigError as exc:
            raise pytest.UsageError(f"graceful harness: {exc}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    """Name the pyproject.toml whose table this run uses, once, at the top."""
    found = config.stash.get(_CONFIG_KEY, None)
    if found is None or found.source is None:
        return None
    return f"graceful harness config: {found.source.resolve()} [tool.graceful.harness]"


def _mentions_graceful(path: Path) -> bool:
    try:
        return "tool.graceful" in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def _load_config(config: pytest.Config) -> HarnessConfig:
    """The table (the rootdir's pyproject.toml, or --graceful-config), under the options."""
    from graceful.harness.settings import load

    flags: dict[str, object] = {
        k: config.getoption(f"--graceful-{k.replace('_', '-')}") for k in _OPTIONS
    }
    flags["image"] = flags["image"] or os.environ.get("GRACEFUL_IMAGE") or None
    flags["env"] = config.getoption("--graceful-env")
    flags["init"] = config.getoption("--graceful-init")
    named = config.getoption("--graceful-config")
    if named is not None:
        return load(flags, config=named, prefix="--graceful-")
    return load(
        flags, config=config.rootpath / "pyproject.toml", required=False, prefix="--graceful-"
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


def harness_config(config: pytest.Config) -> HarnessConfig:
    """The app's description for this pytest run (read once, at startup when there is a
    table or an option)."""
    found = config.stash.get(_CONFIG_KEY, None)
    if found is None:
        found = config.stash[_CONFIG_KEY] = _load_config(config)
    return found


@pytest.fixture(scope="session")
def graceful_config(request: pytest.FixtureRequest) -> HarnessConfig:
    """The ``[tool.graceful.harness]`` table under the ``--graceful-*`` options."""
    return harness_config(request.config)


@pytest.fixture(scope="session")
def graceful_image(graceful_config: HarnessConfig, graceful_engine: Engine) -> str:
    """The image under test: ``--graceful-image``, ``GRACEFUL_IMAGE`` or the table's
    ``image``; built first (once per session) when a build context is given."""
    if graceful_config.build:
        from graceful.harness.engine import ContainerError

        tag = graceful_config.image or "graceful-harness-build:latest"
        try:
            graceful_engine.build(
                graceful_config.build,
                tag=tag,
                dockerfile=graceful_config.dockerfile,
                buildargs=dict(graceful_config.build_args),
            )
        except ContainerError as exc:
            pytest.fail(f"graceful harness: {exc}", pytrace=False)
        return tag
    if not graceful_config.image:
        pytest.skip(
            "no image under test: pass --graceful-image IMAGE, set GRACEFUL_IMAGE, or set "
            "image in [tool.graceful.harness] of pyproject.toml"
        )
    return graceful_config.image


@pytest.fixture
def graceful_settings(graceful_config: HarnessConfig) -> Settings:
    """What the scenarios share: stop timeout, the workload's ports, paths and templates,
    the environment, as the table and the options describe them."""
    return graceful_config.settings()


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

    async def check(self, scenario: str | Scenario) -> ScenarioResult:
        """Run one scenario as a test: skip the test when it was SKIPPED (the image does not
        offer what it needs), fail it with every finding unless it PASSed."""
        from graceful.harness.report import Verdict, format_table

        result = await self.run(scenario)
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(f"{result.name}: {result.headline}")
        if not result.passed:
            table = format_table(self.image_ref, [result], width=120)
            pytest.fail(f"{result.name} {result.verdict.value}\n{table}", pytrace=False)
        return result

    async def start(self, *, volume: str | None = None, ready: bool = True) -> Service:
        """Start a container of the image (on a new volume unless one is given); with
        ``ready``, wait until it is ready (failing within seconds when the admin server the
        settings expect is not there)."""
        if not ready:
            return await self._ctx.start(volume, ready=False)
        from graceful.harness.readiness import start_ready

        return await start_ready(self._ctx, volume)

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

    async def stored_ids(self, volume: str, ids: Iterable[str] = ()) -> set[str]:
        """Start a new container on ``volume`` and return the ids it holds: every listed
        one with an items path; with a read template, those of ``ids`` it finds."""
        from graceful.harness.durability import read_back

        return await read_back(self._ctx, volume, list(ids))

    async def logs(self, service: Service) -> str:
        """The container's output so far."""
        return await self._ctx.logs(service)

    def close(self) -> None:
        """Remove the containers and volumes this harness started."""
        for ctx in self._contexts:
            ctx.remove_now()
        self._contexts.clear()

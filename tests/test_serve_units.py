"""``graceful serve``'s parts in-process: options, target loading, ``serve_target(sock=...)``,
and ``draining()`` where no graceful server runs (Starlette's TestClient, aiohttp's)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import string
import sys
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient as AiohttpTestClient
from aiohttp.test_utils import TestServer as AiohttpTestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient

from graceful import Config, ConfigError, TargetImportError
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations import asgi
from graceful.serve import ServeOptions, load_target, serve_target
from graceful.serve.options import SERVE_ENV_VARS
from graceful.serve.target import web_app_kind
from graceful.testing import run_runtime
from tests.support import APPS

# -- options --------------------------------------------------------------------------------------


def test_defaults_are_uvicorns_but_the_host_is_every_interface() -> None:
    """A container's CMD must be reachable through a published port: 0.0.0.0, not 127.0.0.1."""
    options = ServeOptions.from_env({})
    assert (options.host, options.port) == ("0.0.0.0", 8000)
    assert options.workers == 1
    assert options.access_log is True
    assert options.proxy_headers is True
    assert (options.backlog, options.timeout_keep_alive, options.lifespan) == (2048, 5, "auto")
    assert options.config_overrides() == {}


def test_environment_then_command_line() -> None:
    environ = {"PORT": "9000", "HOST": "127.0.0.1", "WEB_CONCURRENCY": "4"}
    environ |= {"GRACEFUL_ACCESS_LOG": "off", "GRACEFUL_LIFESPAN": "OFF"}
    options = ServeOptions.from_env(environ, port=9001)
    assert (options.host, options.port, options.workers) == ("127.0.0.1", 9001, 4)
    assert options.access_log is False
    assert options.lifespan == "off"
    assert ServeOptions.from_env({}, loop="asyncio", log_level="debug").config_overrides() == {
        "loop": "asyncio",
        "log_level": "debug",
    }


@pytest.mark.parametrize(
    ("environ", "overrides", "message"),
    [
        ({"PORT": "eighty"}, {}, "PORT='eighty' is not a whole number"),
        ({"PORT": "70000"}, {}, "PORT='70000' is out of range (0 to 65535)"),
        ({"WEB_CONCURRENCY": "0"}, {}, "WEB_CONCURRENCY='0' is out of range"),
        ({"GRACEFUL_ACCESS_LOG": "maybe"}, {}, "GRACEFUL_ACCESS_LOG='maybe' is not a yes/no"),
        ({"GRACEFUL_LIFESPAN": "sometimes"}, {}, "GRACEFUL_LIFESPAN='sometimes' must be one of"),
        ({"GRACEFUL_ROOT_PATH": "api"}, {}, "must be empty or start with '/'"),
        ({}, {"workers": 0}, "workers=0 is out of range"),
        ({}, {"uds": "/tmp/s", "fd": 3}, "choose one way to listen"),
        ({}, {"colour": "red"}, "unknown option(s): colour"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    environ: dict[str, str], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ServeOptions.from_env(environ, **overrides)
    assert message in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(SERVE_ENV_VARS.values())),
        st.text(string.printable, max_size=8),
        max_size=6,
    )
)
def test_any_environment_gives_options_or_a_config_error(environ: dict[str, str]) -> None:
    """Whatever the variables hold: options, or a ConfigError naming a variable; never
    another exception (a traceback instead of one line)."""
    message = ""
    try:
        ServeOptions.from_env(environ)
    except ConfigError as exc:
        message = str(exc)
    assert not message or any(var in message for var in environ)


# -- targets --------------------------------------------------------------------------------------


async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:
    """A plain ASGI function."""


class AsgiClass:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """An ASGI app as an object."""


async def main(runtime: Any) -> None:
    """A graceful ``main``: not an app."""


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (plain_asgi, "asgi"),
        (AsgiClass(), "asgi"),
        (Starlette(), "asgi"),
        (web.Application(), "aiohttp"),
        (main, None),
        (3, None),
        (lambda: None, None),
    ],
    ids=["function", "object", "starlette", "aiohttp", "main", "number", "factory"],
)
def test_the_kind_is_read_from_the_object(obj: object, kind: str | None) -> None:
    assert web_app_kind(obj) == kind


def test_fastapi_is_an_asgi_app() -> None:
    fastapi = pytest.importorskip("fastapi")
    assert web_app_kind(fastapi.FastAPI()) == "asgi"


def test_load_target_finds_the_app_in_app_dir() -> None:
    target = load_target("serve_starlette:app", app_dir=str(APPS))
    assert (target.spec, target.kind) == ("serve_starlette:app", "asgi")
    assert target.app is sys.modules["serve_starlette"].app
    made = load_target("serve_aiohttp:make_app", factory=True, app_dir=str(APPS))
    assert made.kind == "aiohttp"
    assert made.app is not sys.modules["serve_aiohttp"].app  # the factory was called


def test_load_target_refuses_with_the_exception_type() -> None:
    with pytest.raises(TargetImportError, match="add --factory"):
        load_target("serve_aiohttp:make_app", app_dir=str(APPS))
    assert issubclass(TargetImportError, ImportError)


# -- serve_target on a socket given by a supervisor ----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "factory"), [("serve_starlette:app", False), ("serve_aiohttp:make_app", True)]
)
async def test_serve_target_serves_on_a_given_socket_and_closes_it_at_stop(
    spec: str, factory: bool
) -> None:
    """The supervisor's path: the socket bound by the caller is the listener.

    1. Bind a socket here; the options ask for another port (which must stay unbound).
    2. Serve on the socket; a request is answered through it.
    3. Stop. Result: the socket is closed (the listener was it) and connects are refused.
    """
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    unused = socket.create_server(("127.0.0.1", 0))
    other = unused.getsockname()[1]
    unused.close()
    target = load_target(spec, factory=factory, app_dir=str(APPS))
    options = ServeOptions(host="127.0.0.1", port=other, access_log=False)
    async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
        await serve_target(runtime, target, options, sock=sock)
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/slow?s=0")
        assert (response.status_code, response.text) == (200, "done")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", other)
    assert runtime.exit_code == 0
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


# -- access lines from asgi.serve and aiohttp.serve ----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "factory", "logger"),
    [
        ("serve_starlette:app", False, "uvicorn.access"),
        ("serve_aiohttp:make_app", True, "aiohttp.access"),
    ],
)
async def test_serve_logs_one_access_line_per_request_by_default(
    spec: str, factory: bool, logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``asgi.serve``/``aiohttp.serve`` keep the server's access log on by default (it used to
    be off, and ``asgi.serve`` stopped ``uvicorn.access`` from propagating for the process).

    One line per request, with the request as fields; uvicorn's own line (it writes one as
    the response starts, since caplog gives the logger a handler) is filtered out.
    """
    caplog.set_level(logging.INFO, logger=logger)
    target = load_target(spec, factory=factory, app_dir=str(APPS))
    async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
        if target.kind == "asgi":
            port = (await asgi.serve(runtime, target.app, host="127.0.0.1", port=0)).port
        else:
            port = (await graceful_aiohttp.serve(runtime, target.app, port=0)).port
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/slow?s=0")
        assert response.status_code == 200
    lines = [r for r in caplog.records if r.name == logger]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line: Any = lines[0]
    assert (line.method, line.path, line.status) == ("GET", "/slow", 200)
    assert line.duration_s >= 0
    assert '"GET /slow?s=0 HTTP/1.1" 200' in line.getMessage()
    assert logging.getLogger(logger).propagate


# -- draining() where graceful does not serve ----------------------------------------------------


def test_starlette_testclient_stream_runs_with_draining_never_set() -> None:
    """The app's own TestClient tests keep working once a stream awaits ``draining()``.

    Control: the scope has no graceful status (``asgi.status`` raises ``LookupError``, which
    is what ``draining`` raised before), yet the stream runs to its own end.
    """
    app = load_target("serve_starlette:app", app_dir=str(APPS)).app
    with TestClient(app) as client:
        response = client.get("/sse?limit=2")
    assert response.status_code == 200
    assert response.text.endswith("event: done\n\n")
    with pytest.raises(LookupError):
        asgi.status({"type": "http"})


async def test_draining_outside_graceful_is_an_unset_event() -> None:
    scope: dict[str, Any] = {"type": "http"}
    event = asgi.draining(scope)
    assert isinstance(event, asyncio.Event)
    assert not event.is_set()


async def test_aiohttp_draining_under_aiohttps_own_test_server() -> None:
    """aiohttp's ``draining(request)`` outside graceful: an event that is never set."""
    seen: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(graceful_aiohttp.draining(request).is_set())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    async with AiohttpTestClient(AiohttpTestServer(app)) as client:
        response = await client.get("/")
        assert (response.status, await response.text()) == (200, "ok")
    assert seen == [False]


# -- the signals before the runtime's ---------------------------------------------------------


def test_startup_signals_abort_the_import_then_hand_the_stop_to_the_runtime() -> None:
    """Issue A2, in-process: ``StartupSignals`` holds SIGTERM from before the import until the
    runtime's own handlers replace it.

    1. Inside ``importing()`` a SIGTERM raises ``LoadingStopped`` where the import is.
    2. Either way the signal is recorded (the process lives on; with no handler, as before,
       it would have died of it), and the runtime it is handed to starts its stop at once.
    3. ``restore()`` puts the previous handler back.
    """
    from prometheus_client import CollectorRegistry

    from graceful import Runtime
    from graceful.signals import LoadingStopped, StartupSignals

    before = signal.getsignal(signal.SIGTERM)
    guard = StartupSignals(["SIGTERM"]).install()
    try:
        with pytest.raises(LoadingStopped, match="SIGTERM"), guard.importing():
            signal.raise_signal(signal.SIGTERM)
        # Recorded as well, in case the import swallowed the exception (issue 18's attack).
        assert guard.received == "SIGTERM"
        signal.raise_signal(signal.SIGTERM)
        assert guard.received == "SIGTERM"
        runtime = Runtime(Config(), registry=CollectorRegistry())
        assert not runtime.stopping
        guard.hand_over(runtime)
        assert runtime.stopping
        assert runtime.stop_reason == "signal SIGTERM"
    finally:
        guard.restore()
    assert signal.getsignal(signal.SIGTERM) is before

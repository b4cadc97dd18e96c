"""The aiohttp integration's per-request path: no middleware, no signal, the app's own intact.

``graceful.integrations.aiohttp.serve`` wraps the server's request handler and gives it its own
request class instead of inserting a middleware and an ``on_response_prepare`` handler into the
app (see ``bench/bench_aiohttp.py`` for what that costs). These tests hold what the old way gave
for free: the app's middlewares and prepare handlers (a sub-app's too) still run, a response
prepared once the stop has begun still says ``Connection: close``, and the requests in flight
are counted by task. Real aiohttp servers on real sockets.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from graceful import Config, Runtime
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations._aiohttp_requests import RequestsInFlight, _sends_prepare_signal
from graceful.testing import run_runtime

GUARD = 10.0  # seconds: hang guard for any single wait


async def get(port: int, path: str) -> tuple[int, dict[str, str]]:
    """One GET on a new keep-alive connection: status and headers (names lower-cased)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def app_with_its_own_hooks(release: asyncio.Event) -> web.Application:
    """An app with a middleware and a prepare handler, each marking the response."""

    @web.middleware
    async def mark(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["X-Middleware"] = "ran"
        return response

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Prepared"] = "ran"

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application(middlewares=[mark])
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", fast)
    app.router.add_get("/held", held)
    return app


async def test_the_apps_middleware_and_prepare_handler_run_and_nothing_is_added() -> None:
    """1. GET / before the stop; 2. a request held in flight across ``request_stop``.

    Result: both responses carry the app's middleware and prepare-handler headers; the app's
    middlewares and signals are the app's alone. Control: the response before the stop keeps
    its keep-alive, the one prepared after it says ``Connection: close`` (the request class's
    check, after the app's own handler ran).
    """
    release = asyncio.Event()
    app = app_with_its_own_hooks(release)
    middlewares, prepare_handlers = list(app.middlewares), list(app.on_response_prepare)
    runtime = Runtime(Config(handle_signals=False, stop_timeout=5), registry=CollectorRegistry())
    async with run_runtime(runtime=runtime):
        server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
        assert list(app.middlewares) == middlewares
        assert list(app.on_response_prepare) == prepare_handlers

        status, before = await get(server.port, "/")
        assert status == 200
        assert (before["x-middleware"], before["x-prepared"]) == ("ran", "ran")
        assert before.get("connection", "keep-alive").lower() != "close"

        held = asyncio.create_task(get(server.port, "/held"))
        async with asyncio.timeout(GUARD):
            while server.inflight() == 0:
                await asyncio.sleep(0.01)
        runtime.request_stop("test: a request in flight")
        release.set()
        status, after = await held
        assert status == 200
        assert (after["x-middleware"], after["x-prepared"]) == ("ran", "ran")
        assert after["connection"].lower() == "close"


async def test_a_sub_apps_prepare_handler_runs() -> None:
    """A prepare handler on a sub-app only: the request class must still send the signal.

    Control: the main app alone has no handler (the request class then skips aiohttp's step),
    and with the sub-app added it is seen as one that has.
    """

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Sub-Prepared"] = "ran"

    async def view(request: web.Request) -> web.Response:
        return web.Response(text="sub")

    app, sub = web.Application(), web.Application()
    sub.on_response_prepare.append(on_prepare)
    sub.router.add_get("/x", view)
    app.router.add_get("/", view)
    assert not _sends_prepare_signal(app)
    app.add_subapp("/sub", sub)
    assert _sends_prepare_signal(app)
    async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
        server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
        status, headers = await get(server.port, "/sub/x")
        assert (status, headers.get("x-sub-prepared")) == (200, "ran")
        status, headers = await get(server.port, "/")
        assert status == 200
        assert "x-sub-prepared" not in headers


async def test_requests_in_flight_are_counted_by_task() -> None:
    """A request held in the app: counted under the task serving it, and waited for.

    Result: one request in flight under a task that is not the test's, ``wait_idle`` returns
    only once it has been answered, and the count is back to 0 with one request seen in all.
    Control: ``begin``/``end`` are refused (a unit here is a request known by its task).
    """
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/held", held)
    async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
        server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
        tracker = server.tracker
        assert isinstance(tracker, RequestsInFlight)
        answer = asyncio.create_task(get(server.port, "/held"))
        async with asyncio.timeout(GUARD):
            while not tracker.requests:
                await asyncio.sleep(0.01)
        ((task, request),) = tracker.requests.items()
        assert task is not asyncio.current_task()
        assert not task.done()
        assert request.path == "/held"
        assert (server.inflight(), tracker.total) == (1, 1)
        idle = asyncio.create_task(tracker.wait_idle())
        await asyncio.sleep(0.05)
        assert not idle.done()  # control: it waits while the request is in the app
        release.set()
        assert (await answer)[0] == 200
        await asyncio.wait_for(idle, GUARD)
        assert (server.inflight(), tracker.total, tracker.ended) == (0, 1, 1)
        with pytest.raises(TypeError, match="by task"):
            tracker.begin()
        with pytest.raises(TypeError, match="by task"):
            tracker.end()

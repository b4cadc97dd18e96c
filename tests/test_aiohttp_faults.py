"""Four faults an attack found in the aiohttp path, each against a real aiohttp server.

1. An error response (aiohttp's 500 or 504, the 500 of a handler that returned nothing) was
   built and written after the request left the tracker: with an ``on_response_prepare``
   handler that awaits, the drain saw nothing in flight and closed the connection first.
2. aiohttp's own connection task, still reading a body the handler did not read, was counted
   as the app's left-over work at exit (exit 3, ``work_cut``, with nothing cut).
3. A middleware handing the handler ``request.clone()`` made every event stream and websocket
   stay registered (stored under the clone, forgotten under the original).
4. A request cut at the drain deadline got no access line.

Real servers on real sockets; the second runs ``graceful serve`` and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from graceful import Config, Runtime
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations._aiohttp_requests import _CUT_TEXT as CUT_TEXT
from graceful.testing import run_runtime
from tests.support import ServiceProcess, free_port

GUARD = 10.0  # seconds: hang guard for any single wait


async def fetch(port: int, path: str) -> tuple[int, str] | str:
    """GET on a new connection: (status, body), or the name of the error the client saw."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def until(check: Any) -> None:
    async with asyncio.timeout(GUARD):
        while not check():
            await asyncio.sleep(0.005)


@contextmanager
def records_of(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` (and its children) at INFO and above, while in the block."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger, handler = logging.getLogger(name), Keep()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- 1. error responses written before the drain ends ---------------------------------------------


@pytest.mark.parametrize("prepare_s", [0.0, 0.02], ids=["prepare-at-once", "prepare-awaits"])
async def test_error_responses_at_a_stop_are_written_before_the_drain_ends(
    prepare_s: float,
) -> None:
    """Four requests held in the app across the stop, answered once the drain has begun.

    The app's ``on_response_prepare`` handler awaits ``prepare_s``. Result: the client gets
    the 500 of a handler that raised, the 504 of one that timed out, the 500 of one that
    returned nothing, and the 200; the stop drains (exit 0). Before the fix the first three
    were a dropped connection whenever the prepare handler awaited. Control: a prepare handler
    that does not await let them through before the fix too, and the handler that answers
    (200) always got its answer.
    """
    release = asyncio.Event()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        await asyncio.sleep(prepare_s)
        response.headers["X-Prepared"] = "ran"

    async def boom(request: web.Request) -> web.Response:
        await release.wait()
        raise RuntimeError("boom")

    async def timeout(request: web.Request) -> web.Response:
        await release.wait()
        raise TimeoutError

    async def nothing(request: web.Request) -> web.Response:
        await release.wait()
        return None  # type: ignore[return-value]  # the fault: no response

    async def ok(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.on_response_prepare.append(on_prepare)
    for path, view in [("/boom", boom), ("/timeout", timeout), ("/none", nothing), ("/ok", ok)]:
        app.router.add_get(path, view)
    runtime = Runtime(Config(handle_signals=False, stop_timeout=5), registry=CollectorRegistry())
    async with run_runtime(runtime=runtime):
        server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
        paths = ["/boom", "/timeout", "/none", "/ok"]
        answers = [asyncio.create_task(fetch(server.port, path)) for path in paths]
        await until(lambda: server.inflight() == 4)
        runtime.request_stop("test: four requests in flight")
        await until(server.draining.is_set)
        release.set()
        got = await asyncio.gather(*answers)
    assert [answer if isinstance(answer, str) else answer[0] for answer in got] == [
        500,
        504,
        500,
        200,
    ]
    assert runtime.exit_code == 0


@pytest.mark.parametrize("under", ["graceful", "control-aiohttp-alone"])
async def test_a_handler_returning_nothing_is_logged_as_aiohttp_does(under: str) -> None:
    """A handler without a return statement, and one returning something else.

    Result: 500 for both, logged with aiohttp's words ("Missing return statement on request
    handler", "Web-handler should return a response instance, got 42"), not as an
    AttributeError of graceful's (``'NoneType' object has no attribute 'prepared'`` before
    the fix). Control: the same app on aiohttp's own ``AppRunner`` logs the same lines.
    """

    async def nothing(request: web.Request) -> web.Response:
        return None  # type: ignore[return-value]  # the fault: no response

    async def other(request: web.Request) -> web.Response:
        return 42  # type: ignore[return-value]

    app = web.Application()
    app.router.add_get("/none", nothing)
    app.router.add_get("/other", other)
    with records_of("aiohttp.server") as logged:
        if under == "graceful":
            async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
                server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
                got = [await fetch(server.port, "/none"), await fetch(server.port, "/other")]
        else:
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                got = [await fetch(port, "/none"), await fetch(port, "/other")]
            finally:
                await runner.cleanup()
    assert [answer if isinstance(answer, str) else answer[0] for answer in got] == [500, 500]
    assert [record.getMessage() for record in logged] == [
        "Missing return statement on request handler",
        "Web-handler should return a response instance, got 42",
    ]
    assert all(record.exc_info and record.exc_info[0] is AttributeError for record in logged)


# -- 2. aiohttp's connection tasks are not the app's left-over work -------------------------------

APP = """
    import asyncio
    from aiohttp import web

    async def noread(request):
        return web.Response(text="your body was not read")

    async def held(request):
        print("held: in the app", flush=True)
        await asyncio.sleep(60)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/noread", noread)
    app.router.add_get("/held", held)
"""


def report_of(service: ServiceProcess) -> dict[str, Any]:
    line = service.wait_for('"shutdown.report"', timeout=GUARD)
    report: dict[str, Any] = json.loads(line)
    return report


@pytest.mark.parametrize("cut", [False, True], ids=["body-left-unread", "control-a-real-cut"])
def test_a_body_left_unread_is_not_work_cut(cut: bool, tmp_path: Path) -> None:
    """A client still uploading a body its handler did not read, then SIGTERM.

    Result: exit 0, no left-over task (aiohttp's task reading the rest of the body ends with
    its connection: the server's, not the app's work). Before the fix: exit 3 ``work_cut``
    with ``RequestHandler.start`` as a left-over task and a hint to use ``create_task``.
    Control (``cut``): a handler really cut at the drain deadline is still exit 3, counted
    once (one request), with no connection task among the left-overs.
    """
    (tmp_path / "lingering_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    argv = [sys.executable, "-m", "graceful", "serve", "lingering_app:app", "--app-dir"]
    argv += [str(tmp_path), "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    env = {"GRACEFUL_STOP_TIMEOUT": "1.5", "GRACEFUL_DELAY": "0"}
    with ServiceProcess(argv, env=env) as service:
        service.wait_for('"service.ready"', timeout=GUARD)
        client = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        if cut:
            client.sendall(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
        else:
            head = b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
            client.sendall(head + b"a" * 1000)
            assert client.recv(100).startswith(b"HTTP/1.1 200")
            client.sendall(b"a" * 1000)  # still uploading when the stop comes
        if cut:
            service.wait_for("held: in the app", timeout=GUARD)
        service.signal(signal.SIGTERM)
        report = report_of(service)
        code = service.wait()
        client.close()
    assert report["leftover_tasks"] == []
    if cut:
        assert (code, report["exit_status"], report["cancelled"]) == (3, "work_cut", 1)
    else:
        assert (code, report["exit_status"], report["cancelled"]) == (0, "ok", 0)


# -- 3. request.clone() in a middleware ---------------------------------------------------------


@pytest.mark.parametrize("clone", [True, False], ids=["clone", "control-same-request"])
async def test_streams_and_websockets_of_a_cloned_request_are_forgotten(clone: bool) -> None:
    """20 event streams and 20 websockets through a middleware that may clone the request.

    Result: once they have ended nothing stays registered (responses, streams, websockets),
    with or without the clone. Control: while one stream is held open it is registered (the
    check sees an entry when there is one), and forgotten when it ends.
    """
    hold = asyncio.Event()

    @web.middleware
    async def rewrite(request: web.Request, handler: Any) -> web.StreamResponse:
        if clone:
            request = request.clone(rel_url=request.rel_url)
        response: web.StreamResponse = await handler(request)
        return response

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        if request.query.get("hold"):
            await hold.wait()
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        await socket_.close()
        return socket_

    app = web.Application(middlewares=[rewrite])
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)

    def registered(server: graceful_aiohttp.AiohttpServer) -> tuple[int, int, int]:
        return (len(server._streams), len(server._websockets), len(server.streams._open))

    async with run_runtime(Config(handle_signals=False, stop_timeout=5)) as runtime:
        server = await graceful_aiohttp.serve(runtime, app, port=0, access_log=False)
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(f"{base}/sse") as response:
                    await response.read()
                async with session.ws_connect(f"{base}/ws") as socket_:
                    await socket_.receive()
            held = asyncio.create_task(fetch(server.port, "/sse?hold=1"))
            await until(lambda: registered(server)[0] == 1)
            assert registered(server) == (1, 0, 1)  # control: an open stream is seen
            hold.set()
            assert await held == (200, "data: 1\n\n")
        await until(lambda: server.inflight() == 0)
        assert registered(server) == (0, 0, 0)
        assert not getattr(server, "_responses", {})
    assert runtime.exit_code == 0


# -- 4. an access line for a request cut at the deadline ------------------------------------------


async def test_a_request_cut_at_the_deadline_gets_an_access_line() -> None:
    """A stream that started and a request with no response yet, both deaf to the stop.

    Result: at the drain deadline the stream is cut and logged with its status and
    ``complete: false``; the request with no response gets a 503 (as on the ASGI side) and
    its line; exit 3. Control: a request answered before the stop has a line without
    ``complete``. Before the fix the two cut requests had no line at all.
    """

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.sleep(60)
        return response

    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="late")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/stuck", stuck)
    app.router.add_get("/ok", ok)
    runtime = Runtime(Config(handle_signals=False, stop_timeout=1), registry=CollectorRegistry())
    with records_of("aiohttp.access") as logged:
        async with run_runtime(runtime=runtime):
            server = await graceful_aiohttp.serve(runtime, app, port=0)
            assert await fetch(server.port, "/ok") == (200, "ok")
            streamed = asyncio.create_task(fetch(server.port, "/stream"))
            stuck_answer = asyncio.create_task(fetch(server.port, "/stuck"))
            await until(lambda: server.inflight() == 2)
            runtime.request_stop("test: two requests deaf to the stop")
            assert await stuck_answer == (503, CUT_TEXT)
            assert isinstance(await streamed, str)  # the stream was cut: the client saw it
    lines = {record.path: record for record in logged}  # type: ignore[attr-defined]
    assert set(lines) == {"/ok", "/stream", "/stuck"}
    assert (lines["/ok"].status, getattr(lines["/ok"], "complete", True)) == (200, True)  # type: ignore[attr-defined]
    assert (lines["/stream"].status, lines["/stream"].complete) == (200, False)  # type: ignore[attr-defined]
    assert (lines["/stuck"].status, getattr(lines["/stuck"], "complete", True)) == (503, True)  # type: ignore[attr-defined]
    assert runtime.exit_code == 3

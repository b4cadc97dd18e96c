"""The race at the start of the drain: connections accepted just before the listener closed.

Such a connection has not sent its request yet, or the request is in the socket buffer, unread,
when the drain begins. Closing it then makes the kernel reset the request instead of answering
it. These tests run the servers in-process (on both loops), open such a connection, stop the
runtime, and send the request at a chosen moment: once the drain has sorted the connections (an
idle keep-alive connection, closed in that same pass, is the witness), or the moment it begins.
Each has a control that shows the request lost by the old behaviour, closing at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
from aiohttp import web

from graceful import Runtime
from graceful.closing import ConnectionState
from graceful.hooks import Phase
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations import asgi, streams
from graceful.integrations._uvicorn_connections import HttpConnections
from graceful.integrations.aiohttp import AiohttpServer
from graceful.testing import run_runtime
from tests.test_drain_http import HANG_GUARD, Client


async def hello_asgi(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def hello_aiohttp(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def start_http(kind: str, runtime: Runtime) -> asgi.UvicornServer | AiohttpServer:
    if kind == "uvicorn":
        return await asgi.serve(
            runtime, hello_asgi, host="127.0.0.1", port=0, lifespan="off", access_log=False
        )
    app = web.Application()
    app.router.add_get("/", hello_aiohttp)
    return await graceful_aiohttp.serve(runtime, app, host="127.0.0.1", port=0, access_log=False)


@dataclass
class InProcess:
    runtime: Runtime
    server: asgi.UvicornServer | AiohttpServer
    clients: list[Client] = field(default_factory=list)

    async def connect(self) -> Client:
        """A new connection, once the server has accepted it."""
        accepted = self.server.connection_count() + 1
        client = await Client.open(self.server.port)
        self.clients.append(client)
        async with asyncio.timeout(HANG_GUARD):
            while self.server.connection_count() < accepted:
                await asyncio.sleep(0.005)
        return client

    async def idle_keepalive(self) -> Client:
        """A connection that had one request answered and stays open (keep-alive)."""
        client = await self.connect()
        response = await client.get("/")
        assert (response.status, response.headers.get("connection")) == (200, None)
        return client

    def draining(self) -> asyncio.Event:
        if isinstance(self.server, AiohttpServer):
            return self.server.draining
        return self.server.middleware.status.draining


@asynccontextmanager
async def in_process(kind: str) -> AsyncIterator[InProcess]:
    started: list[asgi.UvicornServer | AiohttpServer] = []
    listening = asyncio.Event()

    async def main(runtime: Runtime) -> None:
        started.append(await start_http(kind, runtime))
        listening.set()

    async with run_runtime(main=main) as runtime:
        await listening.wait()
        setup = InProcess(runtime, started[0])
        try:
            yield setup
        finally:
            for client in setup.clients:
                client.close()


async def outcome(client: Client) -> str:
    """What a request on ``client`` gets: an answer (with its Connection header) or not."""
    try:
        response = await client.get("/")
    except ConnectionResetError:
        return "reset"
    except (ConnectionAbortedError, h11.RemoteProtocolError):
        return "closed unanswered"
    return f"{response.status} connection={response.headers.get('connection')}"


HTTP_KINDS = ["uvicorn", "aiohttp"]


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_request_sent_after_the_drain_began_on_an_accepted_connection_is_answered(
    kind: str,
) -> None:
    """1. an idle keep-alive connection (the witness) and a fresh one, accepted, no request;
    2. the stop; 3. the witness is closed (FIN): the drain has sorted the connections;
    4. the fresh connection sends its request.

    Result: it is answered (200, ``Connection: close``) and then closed cleanly; the stop
    ends with exit 0. (Before: the fresh connection was closed with the idle ones, and the
    request it sent was reset; see the control below.)
    """
    async with in_process(kind) as setup:
        witness = await setup.idle_keepalive()
        fresh = await setup.connect()
        setup.runtime.request_stop("test")
        async with asyncio.timeout(HANG_GUARD):
            await witness.eof()
            assert await outcome(fresh) == "200 connection=close"
            await fresh.eof()
    assert setup.runtime.exit_code == 0


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_control_closing_a_fresh_connection_at_once_loses_its_request(kind: str) -> None:
    """Control: the old drain, which closed every connection without a request in progress
    at once (here the adapters' ``close_now``, called directly), loses the request the fresh
    connection then sends: it is reset or closed unanswered, never answered."""
    async with in_process(kind) as setup:
        fresh = await setup.connect()
        server = setup.server
        if isinstance(server, AiohttpServer):
            assert server.runner is not None
            assert server.runner.server is not None
            for conn in server.runner.server.connections:
                conn.force_close()
        else:
            connections = HttpConnections(server.server, asgi.SCOPE_KEY)
            for conn in connections.open_connections():
                assert connections.state_of(conn) is ConnectionState.FRESH
                connections.close_now(conn)
        async with asyncio.timeout(HANG_GUARD):
            assert await outcome(fresh) in {"reset", "closed unanswered"}


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_request_landing_as_the_drain_begins_on_an_idle_connection_is_answered(
    kind: str,
) -> None:
    """1. an idle keep-alive connection; 2. the stop; 3. the moment the drain begins
    (``draining`` set), the client sends its next request.

    Result: the request is answered with ``Connection: close``, not reset: the drain lets the
    loop read what has arrived before it closes idle connections, and a connection whose
    request is on its way is not idle. (Before: it was closed in the step that set
    ``draining``, and the request, landing in the socket buffer unread, made the kernel reset
    the connection.)
    """
    async with in_process(kind) as setup:
        client = await setup.idle_keepalive()
        setup.runtime.request_stop("test")
        async with asyncio.timeout(HANG_GUARD):
            await setup.draining().wait()
            assert await outcome(client) == "200 connection=close"
            await client.eof()
    assert setup.runtime.exit_code == 0


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_fresh_connection_that_sends_nothing_is_closed_cleanly(kind: str) -> None:
    """1. a connection accepted that never sends; 2. the stop.

    Result: once its grace is over it is closed with a FIN (not reset, not kept open until
    the drain deadline); the stop ends with exit 0, nothing cut.
    """
    async with in_process(kind) as setup:
        silent = await setup.connect()
        setup.runtime.request_stop("test")
        async with asyncio.timeout(HANG_GUARD):
            await silent.eof()
            await setup.runtime.wait_stopped()
    assert setup.runtime.exit_code == 0


# -- streams -----------------------------------------------------------------------------------


async def echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        async with streams.unit():
            writer.write(b"OK " + line)
            await writer.drain()


@dataclass
class Lines:
    runtime: Runtime
    server: streams.StreamServer
    drain_began: asyncio.Event
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection, once its handler runs."""
        count = self.server.connection_count() + 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        self.writers.append(writer)
        async with asyncio.timeout(HANG_GUARD):
            while self.server.connection_count() < count:
                await asyncio.sleep(0.005)
        return reader, writer

    async def idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection that had one unit done and waits for the next line."""
        reader, writer = await self.connect()
        writer.write(b"first\n")
        assert await reader.readline() == b"OK first\n"
        return reader, writer


@asynccontextmanager
async def lines_server() -> AsyncIterator[Lines]:
    started: list[streams.StreamServer] = []
    listening = asyncio.Event()
    drain_began = asyncio.Event()

    async def main(runtime: Runtime) -> None:
        async def signal_drain() -> None:
            drain_began.set()

        runtime.on_shutdown(signal_drain, phase=Phase.DRAIN, name="test.drain-began")
        started.append(await streams.start_server(runtime, echo_lines, "127.0.0.1", 0))
        listening.set()

    async with run_runtime(main=main) as runtime:
        await listening.wait()
        setup = Lines(runtime, started[0], drain_began)
        try:
            yield setup
        finally:
            for writer in setup.writers:
                writer.close()


async def line_outcome(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    try:
        writer.write(b"second\n")
        await writer.drain()
        answer = await reader.readline()
    except ConnectionResetError:
        return "reset"
    return answer.decode() if answer else "closed unanswered"


async def test_streams_line_sent_after_the_drain_began_on_a_fresh_connection_is_answered() -> None:
    """1. an idle connection (the witness) and a fresh one, whose handler has begun no unit;
    2. the stop; 3. the witness reads EOF: the drain has sorted the connections; 4. the fresh
    connection sends a line.

    Result: it is answered, then the connection is closed cleanly; exit 0. (Before: the
    fresh connection was closed with the idle one, and its line was reset.)
    """
    async with lines_server() as setup:
        witness, _ = await setup.idle()
        fresh = await setup.connect()
        setup.runtime.request_stop("test")
        async with asyncio.timeout(HANG_GUARD):
            assert await witness.read() == b""
            assert await line_outcome(*fresh) == "OK second\n"
            assert await fresh[0].read() == b""
    assert setup.runtime.exit_code == 0


async def test_streams_control_closing_a_fresh_connection_at_once_loses_its_line() -> None:
    """Control: the old drain closed every connection not in a unit at once; the line the
    fresh connection then sends is reset or closed unanswered."""
    async with lines_server() as setup:
        fresh = await setup.connect()
        [conn] = setup.server.connections
        assert conn.state() is ConnectionState.FRESH
        conn.close()
        async with asyncio.timeout(HANG_GUARD):
            assert await line_outcome(*fresh) in {"reset", "closed unanswered"}


async def test_streams_line_landing_as_the_drain_begins_on_an_idle_connection_is_answered() -> None:
    """1. an idle connection; 2. the stop; 3. as the drain begins (its phase's hook runs),
    the client sends a line.

    Result: it is answered, then the connection is closed cleanly; exit 0. (Before: the
    connection was closed in the drain's first step, and the line was reset.)
    """
    async with lines_server() as setup:
        client = await setup.idle()
        setup.runtime.request_stop("test")
        async with asyncio.timeout(HANG_GUARD):
            await setup.drain_began.wait()
            assert await line_outcome(*client) == "OK second\n"
            assert await client[0].read() == b""
    assert setup.runtime.exit_code == 0

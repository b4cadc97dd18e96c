"""Draining real HTTP servers: the example services on uvicorn and on aiohttp, in a child process.

Every test starts ``tests/apps/drain_app.py`` (an example service plus a flush hook), talks to
it over real sockets on 127.0.0.1, sends it a real SIGTERM and checks what clients saw, the
exit code and the ``shutdown.report`` event. Assertions are about outcomes and ordering, never
about how fast something was; timeouts are hang guards only. (``test_drain_fresh.py`` runs
the servers in-process, to send a request at a chosen moment of the drain.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from tests.support import APPS, ServiceProcess, free_port

APP = APPS / "drain_app.py"
SERVERS = ["asgi_service", "aiohttp_service"]
HANG_GUARD = 30.0

pytestmark = pytest.mark.slow


@dataclass
class Child:
    """The service under test (its process and output) and the connections the test opened."""

    process: ServiceProcess
    port: int
    admin_port: int
    stop_timeout: float
    name: str = "http"
    clients: list[Client] = field(default_factory=list)

    async def connect(self) -> Client:
        """A new connection to the service's HTTP port, closed when the test ends."""
        client = await Client.open(self.port)
        self.clients.append(client)
        return client

    def terminate(self) -> None:
        self.process.signal(signal.SIGTERM)

    async def exit_code(self) -> int:
        # In a thread: the test's own clients keep running on the loop meanwhile.
        return await asyncio.to_thread(self.process.wait, HANG_GUARD)

    def report(self) -> dict[str, Any]:
        reports = [e for e in self.process.events() if e.get("event") == "shutdown.report"]
        assert len(reports) == 1, self.process.output()
        return reports[0]


@asynccontextmanager
async def service(
    server: str,
    tmp_path: Path,
    *,
    stop_timeout: float = 10.0,
    loop: str = "asyncio",
    env: dict[str, str] | None = None,
    name: str = "http",
) -> AsyncIterator[Child]:
    port, admin_port = free_port(), free_port()
    settings = {
        "GRACEFUL_LOOP": loop,
        "GRACEFUL_STOP_TIMEOUT": str(stop_timeout),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ADMIN_HOST": "127.0.0.1",
        "ADMIN_PORT": str(admin_port),
        "STATE_PATH": str(tmp_path / "state.sqlite"),
        **(env or {}),
    }
    with ServiceProcess([sys.executable, "-u", str(APP), server], env=settings) as process:
        child = Child(process, port, admin_port, stop_timeout, name)
        try:
            await asyncio.to_thread(process.wait_for, "APP serving", HANG_GUARD)
            yield child
        finally:
            for client in child.clients:
                client.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One HTTP/1.1 connection, spoken with h11 so every byte and every close is visible."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, target: str) -> Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(method="GET", target=target, headers=[("Host", "127.0.0.1")])
        self.writer.write(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        status, headers, body = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionAbortedError("closed before the response ended")

    async def eof(self) -> None:
        """Return when the server closes the connection cleanly (FIN); raise on a reset."""
        data = await self.reader.read(1)
        assert data == b"", f"unexpected bytes on an idle connection: {data!r}"

    def close(self) -> None:
        self.writer.close()


async def admin_get(child: Child, path: str) -> Response:
    client = await Client.open(child.admin_port)
    try:
        return await client.get(path)
    finally:
        client.close()


async def inflight_metric(child: Child) -> float:
    body = (await admin_get(child, "/metrics")).body.decode()
    for line in body.splitlines():
        if line.startswith(f'graceful_inflight_requests{{server="{child.name}"}}'):
            return float(line.split()[-1])
    raise AssertionError("no graceful_inflight_requests metric:\n" + body)


async def wait_inflight(child: Child, count: int) -> None:
    """Bounded wait until the server reports ``count`` requests in flight."""
    async with asyncio.timeout(HANG_GUARD):
        while await inflight_metric(child) != count:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"], ids=["child-asyncio", "child-uvloop"])
@pytest.mark.parametrize("server", SERVERS)
async def test_every_accepted_request_is_answered(server: str, loop: str, tmp_path: Path) -> None:
    """50 requests of 1 s are in flight when SIGTERM arrives.

    Result: all 50 get 200 with ``Connection: close``; exit 0, nothing cut, inside the budget.
    """
    async with service(server, tmp_path, loop=loop) as child:
        clients = [await child.connect() for _ in range(50)]
        requests = [asyncio.create_task(c.get("/work?ms=1000")) for c in clients]
        await wait_inflight(child, 50)
        child.terminate()
        responses = await asyncio.gather(*requests)
        assert [r.status for r in responses] == [200] * 50
        assert all(r.headers.get("connection") == "close" for r in responses)
        assert await child.exit_code() == 0
    report = child.report()
    assert report["inflight_at_signal"] == 50
    assert report["drained"] is True
    assert report["cancelled"] == 0
    assert report["seconds"] < child.stop_timeout


async def wait_refused(child: Child) -> None:
    """Bounded wait until new connections are refused: the listener is closed, the drain on."""
    async with asyncio.timeout(HANG_GUARD):
        while True:
            try:
                client = await Client.open(child.port)
            except ConnectionRefusedError:
                return
            client.close()
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"], ids=["child-asyncio", "child-uvloop"])
@pytest.mark.parametrize("server", SERVERS)
async def test_keepalive_request_crossing_the_stop_is_answered(
    server: str, loop: str, tmp_path: Path
) -> None:
    """The keep-alive race: a client sends its next request on a connection the server saw
    idle when the drain began (the client cannot know of the stop before a ``Connection:
    close`` or a FIN).

    1. 20 keep-alive connections have each had a request answered; one request is in flight.
    2. SIGTERM; once new connections are refused (the drain is on) and a little later (a
       starved client is that late), 10 of the idle connections send their next request.

    Result: each is answered 200 with ``Connection: close`` (the old drain closed the idle
    connections at once: those requests were reset or closed unanswered); the 10 that send
    nothing get a clean FIN once the in-flight answer is complete; exit 0.
    """
    async with service(server, tmp_path, loop=loop) as child:
        idle = [await child.connect() for _ in range(20)]
        for client in idle:
            assert (await client.get("/work?ms=0")).status == 200
        busy = await child.connect()
        answer = asyncio.create_task(busy.get("/work?ms=2000"))
        await wait_inflight(child, 1)
        child.terminate()
        await wait_refused(child)
        await asyncio.sleep(0.2)  # the scenario, not a wait for the server
        senders, silent = idle[:10], idle[10:]
        outcomes = await asyncio.gather(
            *(c.get("/work?ms=0") for c in senders), return_exceptions=True
        )
        assert [getattr(r, "status", repr(r)) for r in outcomes] == [200] * 10
        assert all(
            r.headers.get("connection") == "close" for r in outcomes if isinstance(r, Response)
        )
        assert not answer.done(), "the in-flight request ended before the crossing ones"
        await asyncio.gather(*(c.eof() for c in silent))
        assert (await answer).status == 200
        assert await child.exit_code() == 0
    assert child.report()["drained"] is True


@pytest.mark.parametrize("server", SERVERS)
async def test_request_body_arriving_after_the_stop_is_read(server: str, tmp_path: Path) -> None:
    """1. a ``POST /items`` whose headers are in (the handler is reading its body); 2. SIGTERM;
    3. once the drain is on, the body.

    Result: the write is stored and answered 200 with ``Connection: close``; exit 0. (aiohttp's
    ``close()``, which the drain used to call on busy connections, drops every byte received
    after it: the handler waited for the body until the drain deadline, exit 3.)
    """
    async with service(server, tmp_path, stop_timeout=4.0) as child:
        client = await child.connect()
        body = b'{"id": "late-body"}'
        head = h11.Request(
            method="POST",
            target="/items",
            headers=[("Host", "127.0.0.1"), ("Content-Length", str(len(body)))],
        )
        client.writer.write(client.conn.send(head))
        await wait_inflight(child, 1)
        child.terminate()
        await wait_refused(child)
        client.writer.write(client.conn.send(h11.Data(data=body)))
        client.writer.write(client.conn.send(h11.EndOfMessage()))
        response, answer = None, b""
        while True:
            event = client.conn.next_event()
            if event is h11.NEED_DATA:
                client.conn.receive_data(await client.reader.read(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                answer += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        assert response is not None, answer
        assert response.status_code == 200, answer
        assert json.loads(answer) == {"id": "late-body"}
        assert (b"connection", b"close") in list(response.headers)
        assert await child.exit_code() == 0


@pytest.mark.parametrize("server", SERVERS)
async def test_connections_after_stop_are_refused_not_reset(server: str, tmp_path: Path) -> None:
    """While one request keeps the drain going, clients keep connecting.

    Result: each attempt is either answered (it came before the stop) or refused by the
    kernel; none is accepted and then reset; refusals start before the drain ends.
    """
    async with service(server, tmp_path) as child:
        busy = await child.connect()
        answer = asyncio.create_task(busy.get("/work?ms=2000"))
        await wait_inflight(child, 1)
        child.terminate()
        outcomes: list[str] = []
        async with asyncio.timeout(HANG_GUARD):
            while not outcomes or outcomes[-1] != "refused":
                try:
                    client = await child.connect()
                except ConnectionRefusedError:
                    outcomes.append("refused")
                    continue
                try:
                    outcomes.append(f"answered {(await client.get('/work?ms=0')).status}")
                except ConnectionResetError:
                    outcomes.append("reset")
                except ConnectionAbortedError:
                    outcomes.append("closed unanswered")
        assert not answer.done(), "the drain ended before the listener was closed"
        assert set(outcomes) <= {"answered 200", "refused"}, outcomes
        assert (await answer).status == 200
        assert await child.exit_code() == 0


@pytest.mark.parametrize("server", SERVERS)
async def test_work_longer_than_the_budget_is_cut_and_flush_still_runs(
    server: str, tmp_path: Path
) -> None:
    """A 60 s request is in flight when SIGTERM arrives with a 2 s budget.

    Result: the request is cut at the drain deadline (no 200), the flush hook runs, the
    process exits with 3 (WORK_CUT) inside the budget.
    """
    marker = tmp_path / "flushed"
    async with service(
        server, tmp_path, stop_timeout=2.0, env={"FLUSH_MARKER": str(marker)}
    ) as child:
        busy = await child.connect()
        answer = asyncio.create_task(busy.get("/work?ms=60000"))
        await wait_inflight(child, 1)
        child.terminate()
        assert await child.exit_code() == 3
        try:
            cut = await answer
        except (ConnectionError, h11.RemoteProtocolError):
            pass  # closed without an answer
        else:
            assert cut.status == 503  # told why, not a 500
    assert marker.read_text() == "flush"
    assert "Exception in ASGI application" not in child.process.output()
    # The operator is told which request was cut, not only how many (was: a count alone).
    (named,) = [e for e in child.process.events() if e.get("event") == "requests.cut"]
    assert (named["requests"], named["count"]) == (["GET /work"], 1)
    report = child.report()
    assert report["cancelled"] >= 1
    assert report["drained"] is False
    assert report["seconds"] < child.stop_timeout


@pytest.mark.parametrize("server", SERVERS)
async def test_endless_stream_and_websocket_end_within_the_drain(
    server: str, tmp_path: Path
) -> None:
    """An endless streaming response and an open websocket when SIGTERM arrives.

    Result: the stream ends with its last chunk (a complete response, not a cut); the
    websocket client receives close code 1001 (going away); exit 0 with nothing cut.
    """
    async with service(server, tmp_path) as child:
        streamer = await child.connect()
        stream = asyncio.create_task(streamer.get("/stream"))
        async with ws_connect(f"ws://127.0.0.1:{child.port}/ws") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await wait_inflight(child, 2)
            child.terminate()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(HANG_GUARD):
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        body = (await stream).body
        assert body.startswith(b"tick 0\n")
        assert body.endswith(b"bye\n")
        assert await child.exit_code() == 0
    assert child.report()["cancelled"] == 0


@pytest.mark.parametrize("server", SERVERS)
async def test_readyz_is_503_while_draining_and_inflight_returns_to_zero(
    server: str, tmp_path: Path
) -> None:
    """One request in flight when SIGTERM arrives; the flush hook holds the exit a while.

    Result: ``/readyz`` answers 503 during the drain while ``/livez`` stays 200 and the
    in-flight gauge shows the request; after the answer the gauge is back to 0; exit 0.
    """
    async with service(server, tmp_path, env={"FLUSH_HOLD_S": "3"}) as child:
        assert (await admin_get(child, "/readyz")).status == 200
        busy = await child.connect()
        answer = asyncio.create_task(busy.get("/work?ms=1500"))
        await wait_inflight(child, 1)
        child.terminate()
        async with asyncio.timeout(HANG_GUARD):
            while (await admin_get(child, "/readyz")).status != 503:
                await asyncio.sleep(0.02)
        assert (await admin_get(child, "/livez")).status == 200
        assert await inflight_metric(child) == 1
        assert not answer.done()
        assert (await answer).status == 200
        await wait_inflight(child, 0)
        assert await child.exit_code() == 0

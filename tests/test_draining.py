"""``graceful.draining``: the parts every server integration is built from.

Unit tests of the work tracker, the task set and its bounded ``cancel_all``, the deadline an
``abort()`` gives its tasks, ``close_listeners`` and ``add_drainable``; then each integration's
``abort()`` against a handler that swallows its cancellation, in-process on real sockets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from graceful import Config, Runtime
from graceful.backlog import backlog_waiting, refuse_new_connections
from graceful.budget import Budget
from graceful.closing import close_listeners, unread_bytes
from graceful.draining import (
    Drainable,
    DrainableServer,
    TaskSet,
    WorkTracker,
    abort_deadline,
)
from graceful.integrations import aiohttp as graceful_aiohttp
from graceful.integrations import asgi, streams
from graceful.testing import run_runtime

HANG_GUARD = 20.0


# -- WorkTracker -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=40))
def test_tracker_counts_like_a_model(steps: list[bool]) -> None:
    """Any sequence of begin (True) and end (False): the count never goes below zero."""
    tracker = WorkTracker("model")
    count = started = 0
    for begin in steps:
        if begin:
            tracker.begin()
            count, started = count + 1, started + 1
        else:
            tracker.end()
            count = max(count - 1, 0)
        assert (tracker.count, tracker.total) == (count, started)


async def test_wait_idle_returns_when_the_last_unit_ends() -> None:
    tracker = WorkTracker("t")
    await tracker.wait_idle()  # idle from the start: returns at once
    release = asyncio.Event()

    async def unit() -> None:
        with tracker.track():
            await release.wait()

    units = [asyncio.create_task(unit()) for _ in range(3)]
    await asyncio.sleep(0)
    assert tracker.count == 3
    waiter = asyncio.create_task(tracker.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()
    release.set()
    async with asyncio.timeout(HANG_GUARD):
        await waiter
    assert tracker.count == 0
    await asyncio.gather(*units)


# -- TaskSet -----------------------------------------------------------------------------------


async def test_track_holds_the_task_while_the_block_runs() -> None:
    tasks = TaskSet("t")
    with tasks.track() as task:
        assert task is asyncio.current_task()
        assert list(tasks) == [task]
    assert len(tasks) == 0
    with pytest.raises(KeyError), tasks.track():
        raise KeyError("an error in the block")
    assert len(tasks) == 0


def test_track_outside_a_task_is_an_error() -> None:
    with pytest.raises(RuntimeError), TaskSet("t").track():
        pass


async def test_cancel_all_cancels_tasks_that_obey() -> None:
    tasks = TaskSet("t")
    entered = asyncio.Event()

    async def work() -> None:
        with tasks.track():
            entered.set()
            await asyncio.Event().wait()

    running = [asyncio.create_task(work()) for _ in range(3)]
    await entered.wait()
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        stuck = await tasks.cancel_all(loop.time() + HANG_GUARD)
    assert stuck == set()
    assert all(task.cancelled() for task in running)
    assert logs == []


async def test_cancel_all_gives_up_on_a_task_that_swallows_cancellation() -> None:
    """1. one task obeys cancellation, one swallows it; 2. ``cancel_all`` with a near deadline.

    Result: ``cancel_all`` returns the stubborn task and logs it with its stack; the other is
    cancelled. Control: the recipe it replaces, ``cancel()`` then ``asyncio.wait(tasks)``
    without a timeout, is still waiting when ``cancel_all`` has returned, and ends only once
    the stubborn task is let go (in a service: never, until SIGKILL).
    """
    tasks = TaskSet("srv")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def obeys() -> None:
        with tasks.track():
            await asyncio.Event().wait()

    async def refuses() -> None:
        with tasks.track():
            try:
                entered.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await release.wait()  # swallowed: keeps running after the cancel

    polite = asyncio.create_task(obeys(), name="polite")
    stubborn = asyncio.create_task(refuses(), name="stubborn")
    await entered.wait()
    unbounded = asyncio.create_task(asyncio.wait([polite, stubborn]))  # the old recipe
    loop = asyncio.get_running_loop()
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(HANG_GUARD):
                stuck = await tasks.cancel_all(loop.time() + 0.05)
        assert stuck == {stubborn}
        assert polite.cancelled()
        assert not unbounded.done(), "the old unbounded wait would have returned too"
        [event] = logs
        assert event["event"] == "task.refused_to_exit"
        assert event["log_level"] == "error"
        assert (event["server"], event["task"]) == ("srv", "stubborn")
        assert "refuses" in event["stack"]
    finally:
        release.set()
    async with asyncio.timeout(HANG_GUARD):
        await unbounded
    assert stubborn.done()


async def test_cancel_all_of_nothing_returns_at_once() -> None:
    assert await TaskSet("t").cancel_all(0.0) == set()


# -- abort_deadline ----------------------------------------------------------------------------


async def test_abort_deadline_outside_a_stop_is_a_short_grace() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    deadline = abort_deadline(None)
    assert before < deadline <= loop.time() + 0.5
    runtime = Runtime(Config(handle_signals=False), registry=CollectorRegistry())
    assert runtime.budget is None
    assert before < abort_deadline(runtime.budget) <= loop.time() + 0.5


async def test_abort_deadline_leaves_part_of_the_cancel_phase() -> None:
    """The runtime bounds ``abort()`` by the end of the cancel phase; the tasks' deadline
    falls strictly inside it, so the abort can log, close connections and return its count."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    budget = Budget(now, now, now, now + 10.0, now + 20.0)
    deadline = abort_deadline(budget)
    assert now < deadline < budget.cancel_end
    overran = Budget(now - 2, now - 2, now - 2, now - 1, now + 1.0)  # cancel overran
    assert abort_deadline(overran) <= loop.time()


# -- close_listeners ---------------------------------------------------------------------------


async def _backlog_outcomes(close: Callable[[asyncio.Server], Awaitable[None]]) -> list[str]:
    """Five connections wait in the listen backlog (not yet accepted) when ``close`` runs."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"served\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Blocking connects: the kernel completes each handshake while the loop does not run, so
    # the server has accepted none of them when ``close`` is called.
    socks = [socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) for _ in range(5)]
    await close(server)
    outcomes = []
    async with asyncio.timeout(HANG_GUARD):
        for sock in socks:
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                outcomes.append("served" if await reader.read() == b"served\n" else "closed")
            except ConnectionResetError:
                outcomes.append("reset")
            writer.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD).close()
    return outcomes


async def test_close_listeners_serves_the_backlog_then_refuses() -> None:
    """Result: every connection the kernel had queued is served; a new one is refused.

    On uvloop too, which accepts about one connection per loop iteration: the listener
    refuses new connections first, then the loop runs until the backlog is empty.
    """

    async def close(server: asyncio.Server) -> None:
        await close_listeners([None, server])

    assert await _backlog_outcomes(close) == ["served"] * 5


async def test_control_two_iterations_leave_part_of_the_backlog_on_uvloop() -> None:
    """Control: the fixed two loop iterations (what a ``shared`` listener still gets) serve
    only part of a five-connection backlog on uvloop; the rest is reset. (asyncio's loop
    accepts the whole backlog in one iteration.)"""
    if not isinstance(asyncio.get_running_loop(), uvloop.Loop):
        pytest.skip("asyncio accepts the whole backlog in one iteration")

    async def close(server: asyncio.Server) -> None:
        await close_listeners([server], shared=True)

    outcomes = await _backlog_outcomes(close)
    assert "served" in outcomes
    assert "reset" in outcomes


async def _attempt_while_closing(listener: socket.socket, *, refuse: bool) -> str:
    """A client connects to ``listener`` between its last accept and its close: the window in
    which the kernel still completes handshakes into a backlog nobody will accept from."""
    if refuse:
        assert refuse_new_connections(listener)
    connecting = asyncio.create_task(
        asyncio.open_connection(*listener.getsockname()[:2]), name="late client"
    )
    await asyncio.sleep(0)  # the SYN is sent (and, without the filter, answered)
    listener.close()
    async with asyncio.timeout(HANG_GUARD):
        try:
            reader, writer = await connecting
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "reset"
        try:
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await writer.drain()
            return "reset" if await reader.read() == b"" else "answered"
        except ConnectionResetError:
            return "reset"
        finally:
            writer.close()


async def test_a_connection_attempt_on_a_closing_listener_is_refused_not_reset() -> None:
    """1. a listener refuses new connections (the first step of ``close_listeners``);
    2. a client connects; 3. the listener closes.

    Result: the client is refused (its SYN was dropped; the one it sends again finds the port
    closed): it never holds a connection that is then reset. Control: without the filter the
    kernel completes the handshake into the backlog and the close resets it.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    assert await _attempt_while_closing(listener, refuse=True) == "refused"
    listener = socket.create_server(("127.0.0.1", 0))
    assert await _attempt_while_closing(listener, refuse=False) == "reset"


def test_only_tcp_listeners_can_refuse_new_connections(tmp_path: Path) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unix:
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        assert refuse_new_connections(unix) is False
        assert backlog_waiting(unix) is False
    assert backlog_waiting(unix) is False  # closed


async def test_control_plain_close_resets_the_backlog() -> None:
    """Control: ``Server.close()`` alone loses the queued connections (reset, unserved)."""

    async def close(server: asyncio.Server) -> None:
        server.close()

    assert "served" not in await _backlog_outcomes(close)


async def test_close_listeners_of_nothing_does_nothing() -> None:
    await close_listeners([None])


# -- unread_bytes ------------------------------------------------------------------------------


async def _unread_then_close(send: bytes) -> tuple[int, str]:
    """A server connection that does not read (reading paused) receives ``send``; the server
    counts the unread bytes, then closes. Returns the count and what the client then sees."""
    accepted: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class Deaf(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            transport.pause_reading()
            accepted.set_result(transport)

    server = await asyncio.get_running_loop().create_server(Deaf, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        async with asyncio.timeout(HANG_GUARD):
            transport = await accepted
            writer.write(send)
            await writer.drain()  # on loopback the bytes are in the server's buffer once sent
            count = unread_bytes(transport)
            transport.close()
            try:
                seen = "FIN" if await reader.read() == b"" else "data"
            except ConnectionResetError:
                seen = "reset"
        writer.close()
    finally:
        server.close()
    return count, seen


async def test_closing_with_unread_bytes_resets_the_connection() -> None:
    """Why the drain never closes a connection with bytes unread: the kernel then answers the
    close with a reset, and the client loses the request it sent. ``unread_bytes`` sees them.
    Control: with nothing unread the close is a clean FIN."""
    assert await _unread_then_close(b"GET / HTTP/1.1\r\n\r\n") == (18, "reset")
    assert await _unread_then_close(b"") == (0, "FIN")


def test_unread_bytes_of_no_transport_is_zero() -> None:
    assert unread_bytes(None) == 0


# -- register ----------------------------------------------------------------------------------


class CountingServer:
    """A ``DrainableServer`` with fixed counts, recording the calls the runtime makes."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def inflight(self) -> int:
        return 2

    def connection_count(self) -> int:
        return 5

    async def stop_accepting(self) -> None:
        self.calls.append("stop_accepting")

    async def drain(self) -> None:
        self.calls.append("drain")

    async def abort(self) -> int:
        self.calls.append("abort")
        return 0


async def test_add_drainable_feeds_both_gauges_and_hands_the_server_to_the_runtime() -> None:
    registry = CollectorRegistry()
    runtime = Runtime(Config(handle_signals=False), registry=registry)
    server = CountingServer()
    assert isinstance(server, DrainableServer)
    assert isinstance(server, Drainable)
    runtime.add_drainable(server)
    labels = {"server": "counting"}
    assert registry.get_sample_value("graceful_inflight_requests", labels) == 2
    assert registry.get_sample_value("graceful_open_connections", labels) == 5
    async with asyncio.timeout(HANG_GUARD):
        async with run_runtime(runtime=runtime):
            pass
    assert server.calls == ["stop_accepting", "drain"]


# -- each integration's abort() is bounded -----------------------------------------------------

Started = Callable[[Runtime, Callable[[], Awaitable[None]]], Awaitable[int]]


async def start_streams(runtime: Runtime, handle: Callable[[], Awaitable[None]]) -> int:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        async with streams.unit():
            await handle()

    server = await streams.start_server(runtime, handler, "127.0.0.1", 0, name="stubborn")
    return server.port


async def start_asgi(runtime: Runtime, handle: Callable[[], Awaitable[None]]) -> int:
    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        await handle()

    server = await asgi.serve(
        runtime, app, host="127.0.0.1", port=0, name="stubborn", lifespan="off"
    )
    return server.port


async def start_aiohttp(runtime: Runtime, handle: Callable[[], Awaitable[None]]) -> int:
    async def view(request: web.Request) -> web.Response:
        await handle()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/", view)
    server = await graceful_aiohttp.serve(runtime, app, host="127.0.0.1", port=0, name="stubborn")
    return server.port


@pytest.mark.parametrize("start", [start_streams, start_asgi, start_aiohttp])
async def test_abort_gives_up_on_a_handler_that_swallows_cancellation(start: Started) -> None:
    """1. a handler that swallows its cancellation is in flight; 2. the stop (1 s budget).

    Result: the stop ends with exit code 3; the handler is logged as
    ``task.refused_to_exit`` for its server and counted as cut in the report. Before the
    shared ``TaskSet``, the abort waited for the handler without a bound until the runtime cut
    the abort itself: no log line, and the report counted nothing cut.
    """
    entered = asyncio.Event()
    release = asyncio.Event()
    handlers: list[asyncio.Task[Any]] = []

    async def handle() -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()
            raise

    runtime = Runtime(Config(handle_signals=False, stop_timeout=1.0), registry=CollectorRegistry())
    ports: list[int] = []
    listening = asyncio.Event()
    clients: list[asyncio.StreamWriter] = []

    async def main(runtime: Runtime) -> None:
        ports.append(await start(runtime, handle))
        listening.set()

    try:
        with capture_logs() as logs:
            async with asyncio.timeout(HANG_GUARD):
                async with run_runtime(runtime=runtime, main=main):
                    await listening.wait()
                    _, writer = await asyncio.open_connection("127.0.0.1", ports[0])
                    clients.append(writer)
                    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    await entered.wait()
        assert runtime.exit_code == 3
        refused = [e for e in logs if e["event"] == "task.refused_to_exit"]
        assert [e["server"] for e in refused] == ["stubborn"]
        [report] = [e for e in logs if e["event"] == "shutdown.report"]
        assert report["cancelled"] == 1
    finally:
        release.set()
        if handlers:
            async with asyncio.timeout(HANG_GUARD):
                await asyncio.wait(handlers)
        for writer in clients:
            writer.close()

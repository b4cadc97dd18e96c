"""asyncio streams under the runtime: a drop-in for ``asyncio.start_server``.

Handlers keep the ``(reader, writer)`` signature of :func:`asyncio.start_server` and wrap each
unit of work (one request, one message) in :func:`unit`. That is all the runtime needs to
know which connections are idle and which are busy::

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():      # b"" once the connection is closed
            async with streams.unit():
                writer.write(line.upper())
                await writer.drain()

    server = await streams.start_server(runtime, handle, "0.0.0.0", 7000)

On a stop: the listener closes (new connections are refused); idle connections (a unit done,
none in progress, nothing received since) are closed once no unit is in progress on the
server (at once when none is: a unit begun on one meanwhile is served), so their handlers
read EOF; busy ones are closed right after their current unit; a connection that has had no
unit yet, or has received bytes since its last one, is given a short grace to begin its unit
(``closing.close_connections``); at the drain deadline the handlers still running are
cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from graceful.closing import ConnectionState, close_connections, close_listeners
from graceful.draining import TaskSet, WorkTracker, abort_deadline

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["StreamConnection", "StreamServer", "start_server", "unit"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_current: contextvars.ContextVar[StreamConnection] = contextvars.ContextVar(
    "graceful_stream_connection"
)


class _CountingProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, counting the bytes that arrive (the drain looks at them)."""

    received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)


class StreamConnection:
    """One client connection of a :class:`StreamServer`.

    .. versionadded:: 0.1
    """

    def __init__(
        self, server: StreamServer, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        self.server = server
        self.writer = writer
        self.task = task
        self.busy = False
        self.closing = False
        self.units = 0
        protocol = writer.transport.get_protocol()
        self._protocol = protocol if isinstance(protocol, _CountingProtocol) else None
        self._received_by_last_unit = 0

    @property
    def received(self) -> int:
        """Bytes received on the connection so far."""
        return self._protocol.received if self._protocol is not None else 0

    def state(self) -> ConnectionState:
        """Where the connection stands, for the drain."""
        if self.busy:
            return ConnectionState.BUSY
        if self.units and self.received == self._received_by_last_unit:
            return ConnectionState.IDLE
        # No unit yet, or bytes arrived since the last: the next unit may be on its way.
        return ConnectionState.FRESH

    def close(self) -> None:
        """Close the connection; buffered writes are flushed first."""
        self.closing = True
        self.writer.close()


@asynccontextmanager
async def unit() -> AsyncIterator[None]:
    """Mark one unit of work on the current connection as in flight.

    Use it inside a handler passed to :func:`start_server`. Once a stop has begun the
    connection is closed as soon as the unit ends.

    Raises:
        ConnectionAbortedError: the connection is already being closed by a stop; the
            handler should return (the server swallows this error).
        RuntimeError: called outside a handler of a graceful stream server.

    .. versionadded:: 0.1
    """
    try:
        conn = _current.get()
    except LookupError:
        raise RuntimeError("streams.unit() used outside a graceful stream handler") from None
    if conn.closing:
        raise ConnectionAbortedError("the server is stopping")
    conn.busy = True
    conn.units += 1
    tracker = conn.server.tracker
    tracker.begin()
    try:
        yield
    finally:
        conn.busy = False
        # What arrived while the unit ran is its own (or the next unit, begun at once).
        conn._received_by_last_unit = conn.received
        tracker.end()
        if conn.server.draining:
            conn.close()


class StreamServer:
    """A stream server the runtime drains (a :class:`graceful.draining.Drainable`).

    Build it with :func:`start_server`.

    .. versionadded:: 0.1
    """

    def __init__(self, handler: Handler, *, name: str, runtime: Runtime | None = None) -> None:
        self.name = name
        self.tracker = WorkTracker(name)
        self.tasks = TaskSet(name)
        self.draining = False
        self.connections: set[StreamConnection] = set()
        self._runtime = runtime
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    @property
    def port(self) -> int:
        """The bound port of the first listener (useful after binding port 0)."""
        assert self._server is not None, "start the server first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _start(self, host: str | None, port: int, limit: int, backlog: int) -> None:
        loop = asyncio.get_running_loop()

        # What ``asyncio.start_server`` does, with a protocol that counts the bytes received.
        def protocol() -> _CountingProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return _CountingProtocol(reader, self._serve_client, loop=loop)

        self._server = await loop.create_server(protocol, host, port, backlog=backlog)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self.tasks.track() as task:
            # Also when the drain has begun: a connection accepted as the listener closed
            # starts here while the drain lets reads in, and is sorted with the others.
            conn = StreamConnection(self, writer, task)
            self.connections.add(conn)
            self._no_connections.clear()
            _current.set(conn)
            try:
                await self._handler(reader, writer)
            except ConnectionError:
                # A peer that went away, or our own close during a stop: neither is an error
                # of the service.
                if not (conn.closing or writer.is_closing()):
                    raise
            finally:
                self.connections.discard(conn)
                if not self.connections:
                    self._no_connections.set()
                if not writer.is_closing():
                    writer.close()

    def inflight(self) -> int:
        """Units of work in flight now."""
        return self.tracker.count

    def connection_count(self) -> int:
        """Open client connections."""
        return len(self.connections)

    async def stop_accepting(self) -> None:
        """Close the listener: from now on connections are refused."""
        await close_listeners([self._server])

    async def drain(self) -> None:
        """Close idle connections now and busy ones after their unit; wait for the handlers."""
        self.draining = True
        await close_connections(_Connections(self), self.tracker)
        await self._no_connections.wait()

    async def abort(self) -> int:
        """Cancel the handlers still running; return how many units of work were cut."""
        self.draining = True
        cut = self.tracker.count
        for conn in list(self.connections):
            conn.writer.transport.abort()
        await self.tasks.cancel_all(
            abort_deadline(self._runtime.budget if self._runtime is not None else None)
        )
        return cut


class _Connections:
    """The connections of a :class:`StreamServer`, as ``close_connections`` sees them."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server

    def open_connections(self) -> list[StreamConnection]:
        return list(self._server.connections)

    def state_of(self, conn: StreamConnection) -> ConnectionState:
        return conn.state()

    def transport_of(self, conn: StreamConnection) -> asyncio.BaseTransport | None:
        return conn.writer.transport

    def close_now(self, conn: StreamConnection) -> None:
        conn.close()

    def close_after_response(self, conn: StreamConnection) -> None:
        pass  # ``unit()`` closes the connection as the unit ends


async def start_server(
    runtime: Runtime,
    handler: Handler,
    host: str | None = None,
    port: int = 0,
    *,
    name: str = "streams",
    limit: int = 2**16,
    backlog: int = 100,
) -> StreamServer:
    """Start a stream server that the runtime stops and drains.

    The same call shape as :func:`asyncio.start_server`, plus the runtime. The server is
    registered with ``runtime.add_drainable`` and its in-flight units and open connections feed
    the ``graceful_inflight_requests`` and ``graceful_open_connections`` gauges
    (``server=name``).

    Args:
        runtime: the runtime that owns the stop.
        handler: ``async def handler(reader, writer)``, called once per connection; wrap each
            unit of work in :func:`unit`.
        host: address to bind; ``None`` binds every interface.
        port: port to bind; 0 picks a free one (see :attr:`StreamServer.port`).
        name: the server's label in logs, metrics and the shutdown report.
        limit: buffer limit of each ``StreamReader``.
        backlog: listen backlog.

    Returns:
        The started server.

    .. versionadded:: 0.1
    """
    server = StreamServer(handler, name=name, runtime=runtime)
    await server._start(host, port, limit, backlog)
    runtime.add_drainable(server)
    return server

"""uvicorn's HTTP connections as ``graceful.closing.close_connections`` sees them."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from graceful.closing import ConnectionState

__all__ = ["HttpConnections", "without_access_lines"]

_QUIET: dict[type[asyncio.Protocol], type[asyncio.Protocol]] = {}


class HttpConnections:
    """The HTTP connections of one :class:`uvicorn.Server` (a ``ClientConnections``).

    Websockets are left out: the middleware closes them with its own code (uvicorn's
    ``shutdown()`` would send 1012).

    Args:
        server: the uvicorn server.
        scope_key: the key the middleware sets in a request's scope as it counts the request.
    """

    def __init__(self, server: uvicorn.Server, scope_key: str) -> None:
        self._server = server
        self._scope_key = scope_key

    def open_connections(self) -> list[Any]:
        """uvicorn's HTTP protocol instances, one per open connection."""
        http_class = self._server.config.http_protocol_class
        return [c for c in self._server.server_state.connections if isinstance(c, http_class)]

    def state_of(self, conn: Any) -> ConnectionState:
        """From uvicorn's ``cycle``: the request being handled, or the last one."""
        cycle = conn.cycle
        if cycle is None:
            return ConnectionState.FRESH
        if cycle.response_complete:
            return ConnectionState.IDLE
        if self._scope_key in cycle.scope:
            return ConnectionState.BUSY
        return ConnectionState.RECEIVED  # parsed; its task has not reached the app yet

    def in_flight(self) -> list[str]:
        """``"METHOD /path"`` of each HTTP request whose response is not complete."""
        return [
            f"{conn.cycle.scope['method']} {conn.cycle.scope['path']}"
            for conn in self.open_connections()
            if conn.cycle is not None and not conn.cycle.response_complete
        ]

    def transport_of(self, conn: Any) -> asyncio.BaseTransport | None:
        """The connection's transport."""
        transport: asyncio.BaseTransport | None = conn.transport
        return transport

    def close_now(self, conn: Any) -> None:
        """uvicorn's ``shutdown()``: closes the connection unless a response is under way,
        else turns keep-alive off so that it closes after that response."""
        cycle = conn.cycle
        if cycle is None or cycle.response_complete:
            # shutdown()'s idle case without h11's ConnectionClosed event, which its
            # connection_lost sends anyway: over 100 idle connections the FINs leave ~0.3 ms
            # sooner (bench/results/drain.md).
            conn.transport.close()
        else:
            cycle.keep_alive = False

    close_after_response = close_now

    def abort_request(self, scope: Any) -> None:
        """Drop the connection serving the request of ``scope`` (a client that stopped
        reading: what was written to it cannot leave)."""
        for conn in self.open_connections():
            if conn.cycle is not None and conn.cycle.scope is scope:
                conn.transport.abort()


def without_access_lines(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``protocol_class`` with uvicorn's own access line turned off: graceful writes it.

    uvicorn's HTTP protocols write their line whenever ``uvicorn.access`` has a handler up
    the tree, and graceful's lines go to that logger: a filter alone kept uvicorn's lines out
    but still paid for making and dropping a record per request (about a tenth of a small
    request's CPU).
    """
    quiet = _QUIET.get(protocol_class)
    if quiet is None:

        class Quiet(protocol_class):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.access_log = False

        Quiet.__name__ = Quiet.__qualname__ = protocol_class.__name__
        quiet = _QUIET[protocol_class] = Quiet
    return quiet

"""The admin server: ``/livez``, ``/readyz`` and ``/metrics`` on their own port.

It runs on the service's event loop, so a blocked loop fails the liveness probe the way it
should. HTTP parsing is h11's (the library uvicorn builds on); each probe gets one response and
the connection is closed, which is what probes and scrapers expect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import h11
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from graceful.exceptions import ConfigError

__all__ = ["AdminServer", "HealthResponse", "health_response"]


@dataclass(frozen=True, slots=True)
class HealthResponse:
    """Status, content type and body of one admin answer."""

    status: int
    content_type: str
    body: bytes


def health_response(
    path: str,
    *,
    is_live: Callable[[], bool],
    is_ready: Callable[[], bool],
    registry: CollectorRegistry = REGISTRY,
) -> HealthResponse:
    """Answer one admin path; usable from any server (mount it on your app if you like).

    .. versionadded:: 0.1
    """
    path = path.split("?", 1)[0].rstrip("/") or "/"
    text = "text/plain; charset=utf-8"
    if path == "/livez":
        live = is_live()
        return HealthResponse(200 if live else 503, text, b"ok\n" if live else b"stopped\n")
    if path == "/readyz":
        ready = is_ready()
        return HealthResponse(200 if ready else 503, text, b"ready\n" if ready else b"unready\n")
    if path == "/metrics":
        return HealthResponse(200, CONTENT_TYPE_LATEST, generate_latest(registry))
    return HealthResponse(404, text, b"not found: try /livez, /readyz or /metrics\n")


class AdminServer:
    """Serves the admin paths on ``host:port`` from the running event loop.

    Args:
        host: address to bind; ``0.0.0.0`` inside a container, loopback elsewhere.
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
        is_live: liveness, true until the service has stopped.
        is_ready: readiness, false from the moment a stop begins.
        registry: the metrics to expose.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        is_live: Callable[[], bool],
        is_ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self._is_live = is_live
        self._is_ready = is_ready
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            ConfigError: the port cannot be bound (taken, or not allowed); names ADMIN_PORT.
        """
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _AdminProtocol(self), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(
                f"ADMIN_PORT={self.port} on ADMIN_HOST={self.host}: cannot listen ({exc.strerror})"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop open probe connections (they are one request each)."""
        if self._server is None:
            return
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        self._server = None

    def _respond(self, request: h11.Request) -> HealthResponse:
        if request.method not in (b"GET", b"HEAD"):
            return HealthResponse(405, "text/plain; charset=utf-8", b"method not allowed\n")
        return health_response(
            request.target.decode("ascii", "replace"),
            is_live=self._is_live,
            is_ready=self._is_ready,
            registry=self._registry,
        )


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._conn = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._server._transports.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server._transports.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            self._conn.receive_data(data)
            event = self._conn.next_event()
        except h11.RemoteProtocolError:
            self._send_error(400)
            return
        if isinstance(event, h11.Request):
            answer = self._server._respond(event)
            body = b"" if event.method == b"HEAD" else answer.body
            self._send(answer.status, answer.content_type, body, len(answer.body))
        elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            self._transport.close()

    def _send(self, status: int, content_type: str, body: bytes, length: int) -> None:
        assert self._transport is not None
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(length)),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]
        data = self._conn.send(h11.Response(status_code=status, headers=headers))
        data = (data or b"") + (self._conn.send(h11.Data(data=body)) or b"") if body else data
        data = (data or b"") + (self._conn.send(h11.EndOfMessage()) or b"")
        self._transport.write(data)
        self._transport.close()

    def _send_error(self, status: int) -> None:
        assert self._transport is not None
        try:
            self._send(status, "text/plain; charset=utf-8", b"bad request\n", 12)
        except h11.LocalProtocolError:
            self._transport.close()

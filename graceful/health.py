"""The admin server: ``/livez``, ``/readyz`` and ``/metrics`` on their own port.

It runs on the service's event loop, so a blocked loop fails the liveness probe the way it
should. HTTP parsing is h11's (the library uvicorn builds on); each probe gets one response and
the connection is closed, which is what probes and scrapers expect.

The port faces whatever can reach it, so nothing a client sends can make it hold resources
for long or raise out of the loop:

- a connection that has not had its answer ``REQUEST_TIMEOUT_S`` after it was accepted is
  answered 408 and closed (slowloris, a client that never reads);
- at most ``MAX_CONNECTIONS`` are open: one more closes the oldest, which is the one that has
  waited longest without finishing its request (a probe sends its request at once and is
  answered at once), so idle connections can neither exhaust the process's file descriptors
  nor lock the kubelet out; ``admin.connections_capped`` says so, at most once a minute;
- a request line and headers longer than ``MAX_REQUEST_HEAD`` bytes get 431, malformed ones
  400, both then closed; the body of a request is never read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import h11
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from graceful.exceptions import ConfigError
from graceful.logs import get_logger

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_REQUEST_HEAD",
    "REQUEST_TIMEOUT_S",
    "AdminServer",
    "HealthResponse",
    "health_response",
]

#: Seconds a connection may stay open without having had its answer. Probes send their
#: request as soon as they connect; kubelet probes time out after 1 s by default.
REQUEST_TIMEOUT_S = 5.0
#: Open admin connections at most. Probes and scrapers hold one each for milliseconds.
MAX_CONNECTIONS = 32
#: Bytes of request line and headers at most (h11's ``max_incomplete_event_size``).
MAX_REQUEST_HEAD = 8192
#: Listen backlog, and so asyncio's accept burst: it accepts up to this many connections at
#: once, and closes the oldest a few loop iterations later, so file descriptors in use peak
#: near ``MAX_CONNECTIONS + 3 * ACCEPT_BACKLOG``. Probes come one at a time.
ACCEPT_BACKLOG = 16
#: Seconds between two ``admin.connections_capped`` warnings.
CAPPED_LOG_INTERVAL_S = 60.0

_TEXT = "text/plain; charset=utf-8"


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
    if path == "/livez":
        live = is_live()
        return HealthResponse(200 if live else 503, _TEXT, b"ok\n" if live else b"stopped\n")
    if path == "/readyz":
        ready = is_ready()
        return HealthResponse(200 if ready else 503, _TEXT, b"ready\n" if ready else b"unready\n")
    if path == "/metrics":
        return HealthResponse(200, CONTENT_TYPE_LATEST, generate_latest(registry))
    return HealthResponse(404, _TEXT, b"not found: try /livez, /readyz or /metrics\n")


class AdminServer:
    """Serves the admin paths on ``host:port`` from the running event loop.

    Args:
        host: address to bind: loopback (the default of ``ADMIN_HOST``) when only the
            container's own HEALTHCHECK probes it, ``0.0.0.0`` when something outside does
            (the kubelet, a load balancer).
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
        is_live: liveness, true until the service has stopped.
        is_ready: readiness, false from the moment a stop begins.
        registry: the metrics to expose.
        request_timeout: seconds a connection may stay open without having had its answer.
        max_connections: open connections at most; one more closes the oldest.

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
        request_timeout: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1 or request_timeout <= 0:
            raise ValueError("max_connections must be at least 1 and request_timeout positive")
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._is_live = is_live
        self._is_ready = is_ready
        self._registry = registry
        self._server: asyncio.Server | None = None
        # Insertion-ordered: the first one is the oldest, the one to close at the cap.
        self._connections: dict[_AdminProtocol, None] = {}
        self._capped_since_warning = 0
        self._capped_warned_at: float | None = None
        self._log = get_logger()

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            ConfigError: the address cannot be bound (taken, not allowed, not an address);
                names ADMIN_PORT and ADMIN_HOST.
        """
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _AdminProtocol(self),
                self.host,
                self.port,
                reuse_address=True,
                backlog=ACCEPT_BACKLOG,
            )
        except (OSError, ValueError) as exc:  # ValueError: a host getaddrinfo cannot encode
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"ADMIN_PORT={self.port} on ADMIN_HOST={self.host}: cannot listen ({reason})"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop open probe connections (they are one request each)."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        self._server = None

    @property
    def open_connections(self) -> int:
        """Connections open right now."""
        return len(self._connections)

    def _admit(self, connection: _AdminProtocol) -> None:
        while len(self._connections) >= self.max_connections:
            oldest = next(iter(self._connections))
            oldest.abort()  # connection_lost removes it; pop in case the loop defers that
            self._connections.pop(oldest, None)
            self._note_capped()
        self._connections[connection] = None

    def _forget(self, connection: _AdminProtocol) -> None:
        self._connections.pop(connection, None)

    def _note_capped(self) -> None:
        """Warn that connections were closed at the cap: the first time, then once a minute."""
        self._capped_since_warning += 1
        now = asyncio.get_running_loop().time()
        last = self._capped_warned_at
        if last is None or now - last >= CAPPED_LOG_INTERVAL_S:
            self._log.warning(
                "admin.connections_capped",
                max_connections=self.max_connections,
                closed=self._capped_since_warning,
                problem="clients hold admin connections open without finishing a request; "
                "the oldest are closed to make room",
            )
            self._capped_since_warning = 0
            self._capped_warned_at = now

    def _respond(self, request: h11.Request) -> HealthResponse:
        if request.method not in (b"GET", b"HEAD"):
            return HealthResponse(405, _TEXT, b"method not allowed\n")
        try:
            return health_response(
                request.target.decode("ascii", "replace"),
                is_live=self._is_live,
                is_ready=self._is_ready,
                registry=self._registry,
            )
        except Exception:  # a collector of the registry, not the client: log it, answer 500
            self._log.exception("admin.handler_failed", target=request.target.decode("latin-1"))
            return HealthResponse(500, _TEXT, b"internal error\n")


class _AdminProtocol(asyncio.Protocol):
    """One connection: read one request, answer it, close."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._received = 0  # bytes, before the answer; room > 0 while not answered
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._server.request_timeout, self._timed_out
        )
        self._server._admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server._forget(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # pipelined requests after the first: the connection is closing
        # Bytes past MAX_REQUEST_HEAD are never parsed (h11's own limit only applies to what
        # it buffers, not to a large head that arrives whole).
        room = MAX_REQUEST_HEAD - self._received
        self._received += len(data)
        try:
            self._conn.receive_data(data[:room])
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            # 400 malformed, 431 too large. h11 hints 501 for an unknown Transfer-Encoding;
            # the body is never read here, and 5xx would count the client's error as ours.
            hint = exc.error_status_hint
            self._answer(_error(hint if 400 <= hint < 500 else HTTPStatus.BAD_REQUEST))
            return
        if isinstance(event, h11.Request):
            answer = self._server._respond(event)
            self._answer(answer, head_only=event.method == b"HEAD")
        elif event is not h11.NEED_DATA:  # ConnectionClosed, or anything unexpected
            self.abort()
        elif self._received > MAX_REQUEST_HEAD:
            self._answer(_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))

    def _timed_out(self) -> None:
        if self._answered:
            self.abort()  # answered, but the client does not read it
        else:
            self._answer(_error(HTTPStatus.REQUEST_TIMEOUT))
            self.abort()

    def _answer(self, answer: HealthResponse, *, head_only: bool = False) -> None:
        assert self._transport is not None
        self._answered = True
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]
        try:
            data = self._conn.send(h11.Response(status_code=answer.status, headers=headers)) or b""
            if answer.body and not head_only:
                data += self._conn.send(h11.Data(data=answer.body)) or b""
            data += self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # h11 cannot answer in this state: just close
            self.abort()
            return
        self._transport.write(data)
        self._transport.close()


def _error(status: int) -> HealthResponse:
    return HealthResponse(status, _TEXT, f"{HTTPStatus(status).phrase.lower()}\n".encode())

"""uvicorn (ASGI) under the runtime: graceful owns the signals and the budget.

::

    async def main(runtime: graceful.Runtime) -> None:
        await asgi.serve(runtime, app, host="0.0.0.0", port=8080)

    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))

:func:`serve` starts a real :class:`uvicorn.Server` without ``Server.serve()``, so uvicorn
installs no signal handlers and runs no poll loop of its own. The app's lifespan startup runs
before the listener opens; its lifespan shutdown runs in the runtime's ``close`` phase. On a
stop, driven by the runtime:

1. ``stop_accept``: the listeners close, so new connections are refused.
2. ``drain``: idle keep-alive connections are closed once no request is in flight (at once
   when none is: a request sent on one meanwhile is answered); busy ones answer with
   ``Connection: close`` (already from the moment the stop began), as do fresh ones, given a
   short grace for their first request (``draining.close_connections``); websockets are closed
   with 1001 (going away, instead of uvicorn's 1012); streaming responses see :func:`draining`
   set and should send their last chunk. Drain ends when nothing is in flight.
3. ``cancel``: what is still running at the drain deadline is cancelled.

:class:`GracefulMiddleware` does the per-request part and puts a :class:`ServerStatus` in
``scope["graceful"]`` for the app (``draining(scope)``, in-flight count, lifecycle state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import uvicorn

from graceful.draining import (
    TaskSet,
    WorkTracker,
    abort_deadline,
    close_connections,
    close_listeners,
)
from graceful.exceptions import GracefulError
from graceful.hooks import Phase
from graceful.integrations._access import log_access, only_graceful_access_lines
from graceful.integrations._deprecation import renamed
from graceful.integrations._uvicorn_connections import HttpConnections, without_access_lines

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = [
    "ASGIApp",
    "GracefulMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "ServerStatus",
    "UvicornServer",
    "draining",
    "serve",
    "serve_config",
    "status",
    "stopping",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key under which the middleware publishes the :class:`ServerStatus`.
SCOPE_KEY = "graceful"

_CLOSE_HEADER = (b"connection", b"close")

#: uvicorn's access logger: graceful writes the access lines on it (see ``_access``).
_access_logger = logging.getLogger("uvicorn.access")


class ServerStatus:
    """What the app can see of the server's lifecycle (``scope["graceful"]``).

    Attributes:
        name: the server's label.
        draining: set when the drain begins; streaming responses and long polls should
            await it and end.

    .. versionadded:: 0.1
    """

    def __init__(self, runtime: Runtime, name: str, tracker: WorkTracker) -> None:
        self.name = name
        self.draining = asyncio.Event()
        self._runtime = runtime
        self._tracker = tracker

    @property
    def inflight(self) -> int:
        """Requests and websocket sessions in flight on this server."""
        return self._tracker.count

    @property
    def state(self) -> str:
        """The runtime's lifecycle state: ``starting``, ``serving``, ``stopping``, ``stopped``."""
        return str(self._runtime.state)

    @property
    def closing(self) -> bool:
        """A stop has begun (``runtime.stopping``): responses now carry ``Connection: close``.

        True from the signal on, before :attr:`draining` is set.
        """
        return self._runtime.stopping


def status(scope: Scope) -> ServerStatus:
    """The :class:`ServerStatus` of the server handling this request.

    Raises:
        LookupError: the app does not run behind :class:`GracefulMiddleware`.

    .. versionadded:: 0.1
    """
    try:
        found: ServerStatus = scope[SCOPE_KEY]
    except KeyError:
        raise LookupError("no graceful status in the scope: serve the app with graceful") from None
    return found


def draining(scope: Scope) -> asyncio.Event:
    """The event set when the server starts draining; await it to end a stream in time.

    Works everywhere: when the app is not served by graceful (Starlette's ``TestClient``,
    plain ``uvicorn app:app``, ``uvicorn --reload``) it returns a new event that is never
    set, so a stream awaiting it runs as it would without graceful.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       Outside graceful, an event that is never set instead of ``LookupError``.
    """
    found = scope.get(SCOPE_KEY)
    if isinstance(found, ServerStatus):
        return found.draining
    return asyncio.Event()


#: Deprecated name of :func:`draining` (``runtime.stopping`` is the bool set at the signal).
stopping = renamed(draining, "graceful.integrations.asgi.stopping")


async def _send_cut_response(send: Send) -> None:
    body = b"request cut: the server is shutting down and its budget ran out\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        _CLOSE_HEADER,
    ]
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _ClosedByServer(Exception):
    """The app sent on a websocket the server had already closed for the stop."""


class GracefulMiddleware:
    """ASGI middleware that tracks in-flight work and carries out the drain per request.

    - counts HTTP requests and websocket sessions in flight (``inflight``);
    - adds ``Connection: close`` to responses started once a stop has begun;
    - closes open websockets with ``ws_close_code`` when the drain begins;
    - publishes a :class:`ServerStatus` in ``scope["graceful"]``;
    - with ``access_log``, writes one line per HTTP request once its response has ended, on
      the ``uvicorn.access`` logger in uvicorn's format, with ``method``, ``path``,
      ``status`` and ``duration_s`` as fields.

    :func:`serve` installs it; use it directly only to run another ASGI server.

    Args:
        app: the ASGI application.
        runtime: the runtime that owns the stop.
        name: the server's label.
        ws_close_code: close code sent to websockets on a stop (1001, going away).
        access_log: write an access line per HTTP request.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: Runtime,
        name: str = "http",
        ws_close_code: int = 1001,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.tracker = WorkTracker(name)
        self.status = ServerStatus(runtime, name, self.tracker)
        self.tasks = TaskSet(name)
        self.runtime = runtime
        self.access_log = access_log
        self._ws_close_code = ws_close_code
        self.aborting = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self.status
        started: list[int] = []  # the response's status, once it has started
        began = asyncio.get_running_loop().time()
        failed = True
        with self.tasks.track(), self.tracker.track():
            try:
                if kind == "http":
                    await self.app(scope, receive, self._http_send(send, started))
                else:
                    await self._websocket(scope, receive, send)
                failed = False
            except asyncio.CancelledError:
                if not self.aborting:
                    raise
                # Cut at the drain deadline by abort(): an answer the client can act on
                # instead of uvicorn's 500 and a traceback for a cancellation we caused.
                if kind == "http" and not started:
                    await _send_cut_response(send)
                    started.append(503)
            finally:
                if self.access_log and kind == "http":
                    self._log_access(scope, started, failed, began)

    def _log_access(self, scope: Scope, started: list[int], failed: bool, began: float) -> None:
        # An app that failed before answering gets uvicorn's 500; one that returned without
        # answering (its client left) has no status to log.
        status = started[0] if started else 500 if failed else None
        if status is None:
            return
        log_access(
            _access_logger,
            client=scope.get("client"),
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            http_version=scope.get("http_version", "1.1"),
            status=status,
            duration=asyncio.get_running_loop().time() - began,
        )

    def _http_send(self, send: Send, started: list[int]) -> Send:
        runtime = self.runtime

        async def send_with_close(message: Message) -> None:
            # Decided when the headers leave, so a response that started before the stop
            # keeps its keep-alive and the server closes the connection after it instead.
            if message["type"] == "http.response.start":
                started.append(message["status"])
                if runtime.stopping:
                    headers = list(message.get("headers", ()))
                    if _CLOSE_HEADER not in headers:
                        headers.append(_CLOSE_HEADER)
                    message = {**message, "headers": headers}
            await send(message)

        return send_with_close

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = asyncio.Lock()
        closed = False
        closed_by_server = False

        async def guarded_send(message: Message) -> None:
            nonlocal closed
            async with lock:
                if closed_by_server:
                    raise _ClosedByServer("websocket closed by the server for a stop")
                if message["type"] == "websocket.close":
                    closed = True
                await send(message)

        async def close_on_stop() -> None:
            nonlocal closed, closed_by_server
            await self.status.draining.wait()
            async with lock:
                if closed:
                    return
                closed = closed_by_server = True
                await send(
                    {
                        "type": "websocket.close",
                        "code": self._ws_close_code,
                        "reason": "server shutting down",
                    }
                )

        closer = asyncio.create_task(close_on_stop(), name="graceful-ws-close")
        try:
            await self.app(scope, receive, guarded_send)
        except _ClosedByServer:
            pass
        finally:
            closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closer


class UvicornServer:
    """A :class:`uvicorn.Server` driven by the runtime (a ``Drainable``).

    Build it with :func:`serve` or :func:`serve_config`.

    Attributes:
        server: the uvicorn server.
        middleware: the :class:`GracefulMiddleware` around the app.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        server: uvicorn.Server,
        middleware: GracefulMiddleware,
        name: str,
        *,
        shared_sockets: bool = False,
    ) -> None:
        self.name = name
        self.server = server
        self.middleware = middleware
        self._ticker: asyncio.Task[None] | None = None
        self._shared_sockets = shared_sockets

    @property
    def port(self) -> int:
        """The bound port of the first listener (useful after binding port 0)."""
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    def connection_count(self) -> int:
        """Open client connections (HTTP and websocket)."""
        return len(self.server.server_state.connections)

    async def _start(self, sockets: list[socket.socket] | None) -> None:
        config = self.server.config
        self.server.lifespan = config.lifespan_class(config)
        try:
            await self.server.startup(sockets=sockets)
        except SystemExit:
            # uvicorn exits the process when the lifespan startup fails or the port cannot
            # be bound; the runtime decides how the process ends.
            where = "the given socket" if sockets else config.uds or f"{config.host}:{config.port}"
            raise GracefulError(
                f"uvicorn server {self.name!r} could not start on {where}"
                " (lifespan startup failed or the address is unavailable; see the log)"
            ) from None
        self._ticker = asyncio.create_task(self._tick(), name=f"graceful-{self.name}-date")

    async def _tick(self) -> None:
        # uvicorn's main loop refreshes the Date header once a second; we do not run that
        # loop (it also polls for the exit flag), so this is all that is kept of it.
        while True:
            await self.server.on_tick(0)
            await asyncio.sleep(1.0)

    async def _lifespan_shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.server.lifespan.shutdown()

    def inflight(self) -> int:
        """Requests and websocket sessions in flight now."""
        return self.middleware.tracker.count

    async def stop_accepting(self) -> None:
        """Close the listeners: from now on connections are refused."""
        await close_listeners(self.server.servers, shared=self._shared_sockets)

    async def drain(self) -> None:
        """Close idle connections, tell streams and websockets to end, wait for the work."""
        self.middleware.status.draining.set()
        connections = HttpConnections(self.server, SCOPE_KEY)
        await close_connections(connections, self.middleware.tracker)
        await self.middleware.tracker.wait_idle()

    async def abort(self) -> int:
        """Cancel the requests still running and drop every connection; return the count cut."""
        cut = self.middleware.tracker.count
        self.middleware.aborting = True
        await self.middleware.tasks.cancel_all(abort_deadline(self.middleware.runtime.budget))
        for conn in list(self.server.server_state.connections):
            conn.shutdown()
        return cut


async def serve_config(
    runtime: Runtime,
    config: uvicorn.Config,
    *,
    name: str = "http",
    ws_close_code: int = 1001,
    sockets: Sequence[socket.socket] | None = None,
) -> UvicornServer:
    """Start a uvicorn server from a :class:`uvicorn.Config`; the runtime stops it.

    Runs the app's lifespan startup, binds the listeners and returns; the runtime keeps the
    server running until a stop and then drains it (see the module docs). The app's lifespan
    shutdown runs in the ``close`` phase. The settings of ``config`` that concern stopping
    (``timeout_graceful_shutdown``, signal handling) are not used: the runtime's budget applies.

    With ``config.access_log`` (uvicorn's default) graceful writes the access lines, after
    each response, on the ``uvicorn.access`` logger in uvicorn's format plus the request's
    ``method``, ``path``, ``status`` and ``duration_s`` as fields; uvicorn's own lines
    (written when a response starts, without a duration) are filtered out.

    Args:
        runtime: the runtime that owns the signals and the stop.
        config: uvicorn's configuration (app, host, port, protocols, ...).
        name: the server's label in logs, metrics (``server=name``) and the shutdown report.
        ws_close_code: close code sent to open websockets on a stop.
        sockets: serve on these listening sockets instead of binding ``config``'s address
            (a socket shared by a supervisor with its workers). They are closed in
            ``stop_accept``.

    Returns:
        The started server.

    Raises:
        GracefulError: the lifespan startup failed or the address could not be bound.

    .. versionadded:: 0.1
    """
    if not config.loaded:
        config.load()
    config.http_protocol_class = without_access_lines(config.http_protocol_class)
    middleware = GracefulMiddleware(
        config.loaded_app,
        runtime=runtime,
        name=name,
        ws_close_code=ws_close_code,
        access_log=config.access_log,
    )
    config.loaded_app = middleware
    only_graceful_access_lines(_access_logger)
    # A socket given by a supervisor, or inherited (``fd``), may be held by other processes.
    shared = sockets is not None or config.fd is not None
    server = UvicornServer(uvicorn.Server(config), middleware, name, shared_sockets=shared)
    await server._start(list(sockets) if sockets is not None else None)
    runtime.add_drainable(server)
    runtime.on_shutdown(server._lifespan_shutdown, phase=Phase.CLOSE, name=f"{name}.lifespan")
    return server


async def serve(
    runtime: Runtime,
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "http",
    http: Literal["auto", "h11", "httptools"] = "auto",
    ws: Literal["auto", "none", "websockets", "websockets-sansio", "wsproto"] = "auto",
    lifespan: Literal["auto", "on", "off"] = "auto",
    timeout_keep_alive: int = 5,
    access_log: bool = True,
    proxy_headers: bool = False,
    root_path: str = "",
    ws_close_code: int = 1001,
) -> UvicornServer:
    """Start ``app`` on uvicorn; the runtime stops it.

    The common settings as keywords; for anything else build a :class:`uvicorn.Config` and
    call :func:`serve_config`. uvicorn's logging configuration is left alone (``log_config``
    is ``None``), so the service's own logging setup applies.

    Args:
        runtime: the runtime that owns the signals and the stop.
        app: the ASGI application.
        host: address to bind (``0.0.0.0`` in a container).
        port: port to bind; 0 picks a free one (see :attr:`UvicornServer.port`).
        name: the server's label in logs, metrics and the shutdown report.
        http: uvicorn's HTTP protocol implementation.
        ws: uvicorn's websocket implementation.
        lifespan: whether to run the app's lifespan events.
        timeout_keep_alive: seconds an idle keep-alive connection is kept while serving.
        access_log: log each request on uvicorn's access logger (``uvicorn.access``), as
            uvicorn does by default, with the duration (see :func:`serve_config`).
        proxy_headers: trust ``X-Forwarded-*`` headers (from loopback).
        root_path: ASGI ``root_path`` for apps mounted below a prefix.
        ws_close_code: close code sent to open websockets on a stop.

    Returns and raises as :func:`serve_config`.

    .. versionadded:: 0.1
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        ws=ws,
        lifespan=lifespan,
        timeout_keep_alive=timeout_keep_alive,
        proxy_headers=proxy_headers,
        root_path=root_path,
        log_config=None,
    )
    # Set after construction: ``uvicorn.Config(access_log=False)`` also stops the
    # ``uvicorn.access`` logger from propagating, for the whole process.
    config.access_log = access_log
    return await serve_config(runtime, config, name=name, ws_close_code=ws_close_code)

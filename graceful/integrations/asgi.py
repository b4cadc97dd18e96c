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
   short grace for their first request (``closing.close_connections``); websockets are closed
   with 1001 (going away, instead of uvicorn's 1012); streaming responses see :func:`draining`
   set and should send their last chunk. Drain ends when nothing is in flight.
3. ``cancel``: what is still running at the drain deadline is cancelled.

:class:`GracefulMiddleware` does the per-request part and puts a :class:`ServerStatus` in
``scope["graceful"]`` for the app (``draining(scope)``, in-flight count, lifecycle state).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import uvicorn

from graceful.closing import close_connections, close_listeners
from graceful.draining import TaskSet, abort_deadline
from graceful.exceptions import GracefulError
from graceful.hooks import Phase
from graceful.integrations._access import only_graceful_access_lines
from graceful.integrations._asgi_middleware import (
    SCOPE_KEY,
    ASGIApp,
    GracefulMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    ServerStatus,
    draining,
    end_on_drain,
    status,
)
from graceful.integrations._cut import log_requests_cut
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
    "end_on_drain",
    "serve",
    "serve_config",
    "status",
]


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
        lifespan = self.server.lifespan = config.lifespan_class(config)
        app_startup = lifespan.startup

        async def startup_capturing_background() -> None:
            # Tasks the app starts in its lifespan (a poller) are its background work: the
            # stop cancels what its lifespan shutdown leaves running, not as cut work.
            with self.middleware.runtime.capture_background():
                await app_startup()

        lifespan.startup = startup_capturing_background
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
        await self.middleware.streams.end_all()
        connections = HttpConnections(self.server, SCOPE_KEY)
        await close_connections(connections, self.middleware.tracker)
        await self.middleware.tracker.wait_idle()

    async def abort(self) -> int:
        """Cancel the requests still running and drop every connection; return the count cut."""
        cut = self.middleware.tracker.count
        self.middleware.aborting = True
        log_requests_cut(self.name, HttpConnections(self.server, SCOPE_KEY).in_flight())
        # uvicorn's own set of request tasks: the middleware does not look up its task per
        # request (asyncio.current_task() cost about 5 % of a small request's CPU).
        running = TaskSet(self.name)
        for task in self.server.server_state.tasks:
            running.add(task)
        await running.cancel_all(abort_deadline(self.middleware.runtime.budget))
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
    each response, on the ``uvicorn.access`` logger: ``"event": "http.request"`` with the
    request's ``method``, ``path``, ``status``, ``duration_s`` and ``client`` as fields (a
    record in uvicorn's format for a filter or handler of the application's); uvicorn's own
    lines (written when a response starts, without a duration) are turned off.

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
    only_graceful_access_lines(logging.getLogger("uvicorn.access"))
    # A socket given by a supervisor, or inherited (``fd``), may be held by other processes.
    shared = sockets is not None or config.fd is not None
    server = UvicornServer(uvicorn.Server(config), middleware, name, shared_sockets=shared)
    middleware.streams.abandon = HttpConnections(server.server, SCOPE_KEY).abort_request
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

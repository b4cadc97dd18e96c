"""aiohttp under the runtime: an ``aiohttp.web.Application`` on aiohttp's ``AppRunner``.

::

    async def main(runtime: graceful.Runtime) -> None:
        await graceful.integrations.aiohttp.serve(runtime, app, host="0.0.0.0", port=8080)

aiohttp's runner is set up with ``handle_signals=False`` and is never ``cleanup()``-ed: that
call applies ``shutdown_timeout`` twice (once to wait, once more to cancel) and knows nothing
of the process's budget. The runtime drives the same steps instead:

1. ``stop_accept``: the listener closes, so new connections are refused.
2. ``drain``: idle keep-alive connections are closed once no request is in flight (at once
   when none is: a request sent on one meanwhile is answered); busy ones close after their
   current response, which carries ``Connection: close`` (so does every response started once
   the stop has begun); fresh ones (accepted just before the listener closed) are given a
   short grace for their first request (``closing.close_connections``); websockets are closed
   with 1001 (going away); the app's ``on_shutdown`` signal runs; streaming handlers see
   :func:`draining` set. Drain ends when no request is in flight.
3. ``cancel``: handlers still running at the drain deadline are cancelled.
4. ``close``: the app's ``on_cleanup`` signal and cleanup contexts run (LIFO with the other
   resources of the service).

The app's ``on_startup`` signal and cleanup contexts run in :func:`serve`, before the listener
opens.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger
from aiohttp.web_protocol import RequestHandler

from graceful.closing import close_connections, close_listeners
from graceful.draining import TaskSet, abort_deadline
from graceful.hooks import Phase
from graceful.integrations._access import log_access
from graceful.integrations._aiohttp_requests import (
    END_ON_DRAIN,
    LISTENS,
    Connections,
    RequestsInFlight,
    complete,
    connection_tasks,
    current_task_of,
    cut_response,
    ends_on_drain,
    error_response,
    not_a_response,
    request_class,
)
from graceful.integrations._cut import log_requests_cut, name_request
from graceful.integrations._ending import EndingStream, EndingStreams

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["AccessLogger", "AiohttpServer", "draining", "end_on_drain", "serve"]

_SERVER_KEY: web.AppKey[AiohttpServer] = web.AppKey("graceful_server")


def draining(request: web.BaseRequest) -> asyncio.Event:
    """The event set when the server starts draining; await it to end a stream in time.

    Works everywhere: when the app is not served by :func:`serve` (aiohttp's test client,
    ``web.run_app``) it returns a new event that is never set, so a stream awaiting it runs
    as it would without graceful.

    .. versionadded:: 0.1
    """
    request[LISTENS] = True  # the handler ends its stream itself: the drain leaves it to do so
    if isinstance(request, web.Request) and _SERVER_KEY in request.config_dict:
        return request.config_dict[_SERVER_KEY].draining
    return asyncio.Event()


def end_on_drain(request: web.BaseRequest, end: bool = True) -> None:
    """Choose whether the drain ends this request's streaming response at its start.

    An event stream (``text/event-stream``) whose handler does not await :func:`draining` is
    ended by default: ``write_eof()`` sends its last chunk (the client's ``EventSource``
    reconnects at once) and the handler is cancelled (its ``finally`` runs), a clean end. Call
    ``end_on_drain(request)`` for another endless stream to be ended the same way,
    ``end_on_drain(request, False)`` for an event stream to run until the drain deadline.

    .. versionadded:: 0.1
    """
    request[END_ON_DRAIN] = end


_WebSocket = web.WebSocketResponse
#: Seconds the close phase waits for aiohttp's connection tasks it cancelled (they end at once).
_CONNECTIONS_GRACE = 1.0
_Handle = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _abort_connection(request: object) -> None:
    # A client that stopped reading: the last chunk cannot leave, and aiohttp would wait for
    # it again after the handler returns.
    transport = request.transport if isinstance(request, web.BaseRequest) else None
    if transport is not None:
        transport.abort()


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access lines in the shape graceful writes for uvicorn.

    ``"event": "http.request"`` with ``method``, ``path``, ``status``, ``duration_s`` and
    ``client`` as fields, on ``aiohttp.access`` (see ``graceful.integrations._access``).

    .. versionadded:: 0.1
    """

    @property
    def enabled(self) -> bool:
        """Whether a line would be written (aiohttp skips the call otherwise)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line for one request (``time``: seconds it took)."""
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        log_access(
            self.logger,
            client=(peer[0], peer[1]) if isinstance(peer, tuple) else None,
            method=request.method,
            path=request.path,
            query=request.query_string,
            http_version=f"{request.version.major}.{request.version.minor}",
            status=response.status,
            duration=time,
        )


class AiohttpServer:
    """An aiohttp application served under the runtime (a ``Drainable``).

    Build it with :func:`serve`.

    Attributes:
        runner: aiohttp's ``AppRunner``.
        listener: the listening server, what ``TCPSite`` would open; owned here so that
            closing it loses no connection (see ``closing.close_listeners``).
        draining: set when the drain begins.

    .. versionadded:: 0.1
    """

    def __init__(
        self, app: web.Application, *, runtime: Runtime, name: str, ws_close_code: int
    ) -> None:
        self.name = name
        self.app = app
        self.tracker = RequestsInFlight(name)
        self.tasks = TaskSet(name)
        self.draining = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.Server | None = None
        self._shared_listener = False
        self._runtime = runtime
        self._ws_close_code = ws_close_code
        self._access_log = True
        # Keyed by the request's connection (aiohttp serves one request at a time on each):
        # not by the request object, which a middleware may replace with a clone. Each entry
        # lives only while its handler runs: the responses prepared through ``_prepared`` (all
        # but a ``web.Response`` before the stop), the websockets, the streams to end.
        self._responses: dict[RequestHandler, web.StreamResponse] = {}
        self._websockets: dict[RequestHandler, web.WebSocketResponse] = {}
        self._ws_closing: set[RequestHandler] = set()
        self._closers: set[asyncio.Task[bool]] = set()
        self.streams = EndingStreams(name)
        self.streams.abandon = _abort_connection
        self._streams: dict[RequestHandler, tuple[EndingStream, web.StreamResponse]] = {}
        self._cutting = False

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        assert self.listener is not None, "start the server first"
        port: int = self.listener.sockets[0].getsockname()[1]
        return port

    def _connections(self) -> list[RequestHandler]:
        server = self.runner.server if self.runner is not None else None
        return server.connections if server is not None else []

    def connection_count(self) -> int:
        """Open client connections."""
        return len(self._connections())

    def _handler(self, handle: _Handle) -> _Handle:
        """The server's request handler: ``handle`` (the app's) with the drain's bookkeeping.

        Around everything the app does (its middlewares too), and not itself a middleware:
        one middleware makes aiohttp build and run its middleware chain for every request.
        Everything here runs for every request, so it is kept to a few stores in a closure:
        the request under its task in the tracker, a change signalled only to waiters. Every
        response, aiohttp's error responses too, is written before the request leaves the
        tracker: "nothing in flight" means every answer has been written, not just computed.
        """
        tracker = self.tracker
        inflight, waiters = tracker.requests, tracker.waiters
        responses = self._responses
        current_task = current_task_of(asyncio.get_running_loop())
        plain = web.Response
        clock = time.perf_counter

        async def track(request: web.BaseRequest) -> web.StreamResponse:
            task: asyncio.Task[Any] = current_task()  # type: ignore[assignment]  # aiohttp's
            began = clock()  # for the access line of a request cut at the deadline
            inflight[task] = request
            if waiters:
                tracker.changed()
            try:
                # Typed as it may come: a handler without a return statement returns None.
                response: web.StreamResponse | None = await handle(request)
            except web.HTTPException as exc:
                await complete(request, exc)
                raise
            except asyncio.CancelledError:
                ended = self._ended_stream(request)
                if ended is not None:
                    # The drain ended this stream (write_eof) and cancelled the handler to
                    # run its finally: a clean end.
                    task.uncancel()
                    return ended
                if not self._cutting:
                    raise
                # Cut at the drain deadline by abort(). One whose response started gets its
                # access line with ``complete: false`` and is cut; one with none is answered.
                started = self._responses.get(request.protocol)
                if started is not None or request.writer.output_size > 0:
                    self._log_cut(request, started, began)
                    raise
                task.uncancel()
                return await cut_response(request)
            except Exception as exc:
                answer = self._answer_to(request, exc)
                if answer is None:
                    raise
                return await answer
            else:
                # ``type() is`` first: a response is a mapping, so ``isinstance`` goes through
                # ``ABCMeta``; the usual response is a ``web.Response``.
                if type(response) is not plain:
                    if isinstance(response, _WebSocket):
                        return response
                    if not isinstance(response, web.StreamResponse):
                        response = not_a_response(request, response)
                # ``complete`` inline: one coroutine less per request.
                try:
                    if not response.prepared:
                        await response.prepare(request)
                    await response.write_eof()
                except ConnectionError:
                    pass  # the client left; aiohttp sees it again and handles it as usual
                except asyncio.CancelledError:
                    if self._cutting:  # its write was cut at the deadline (a slow reader)
                        self._log_cut(request, response, began)
                    raise
                return response
            finally:
                del inflight[task]
                tracker.ended += 1
                if waiters:
                    tracker.changed()
                if responses:
                    self._forget(request.protocol)

        return track

    def _ended_stream(self, request: web.BaseRequest) -> web.StreamResponse | None:
        # The response of this request's stream if the drain ended it, else None.
        ending = self._streams.get(request.protocol)
        return ending[1] if ending is not None and ending[0].ended else None

    def _answer_to(
        self, request: web.BaseRequest, exc: Exception
    ) -> Awaitable[web.StreamResponse] | None:
        # What the request handler returns for the app's exception, None to re-raise it.
        key = request.protocol
        if isinstance(exc, ConnectionError) and key in self._ws_closing:
            # The handler wrote to a websocket we closed for the stop.
            return self._done(self._websockets[key])
        ended = self._ended_stream(request)
        if ended is not None:
            return self._done(ended)  # the handler wrote on after the drain ended its stream
        if request.writer.output_size > 0:
            # Part of a response left already: aiohttp logs it and drops the connection,
            # with nothing more to write.
            return None
        return error_response(request, exc)

    @staticmethod
    async def _done(response: web.StreamResponse) -> web.StreamResponse:
        return response

    def _log_cut(
        self, request: web.BaseRequest, response: web.StreamResponse | None, began: float
    ) -> None:
        # ``response`` is None only for a ``web.Response`` the handler prepared itself before
        # the stop (not seen by ``_prepared``): its status is not known, no line is written.
        if not self._access_log or response is None:
            return
        peer = request.transport.get_extra_info("peername") if request.transport else None
        log_access(
            access_logger,
            client=(peer[0], peer[1]) if isinstance(peer, tuple) else None,
            method=request.method,
            path=request.path,
            query=request.query_string,
            http_version=f"{request.version.major}.{request.version.minor}",
            status=response.status,
            duration=time.perf_counter() - began,
            complete=False,
        )

    def _forget(self, key: RequestHandler) -> None:
        self._responses.pop(key, None)
        ending = self._streams.pop(key, None)
        if ending is not None:
            self.streams.close(ending[0])
        self._websockets.pop(key, None)
        self._ws_closing.discard(key)

    def _prepared(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        # What an ``on_response_prepare`` handler would do, called by the request itself
        # (``_aiohttp_requests.request_class``) after the app's own handlers, for every
        # response but a ``web.Response`` before the stop: no signal to send per response.
        # Keyed by the connection (one request at a time on it), not by the request object:
        # a middleware may hand the handler a ``request.clone()``.
        key = request.protocol
        self._responses[key] = response
        if type(response) is not web.Response and isinstance(response, _WebSocket):
            self._websockets[key] = response
            if self.draining.is_set():
                self._close_websocket(key, response)
            return
        if self._runtime.stopping:
            # The hook runs after aiohttp derived the Connection header, so set both.
            response.force_close()
            response.headers["Connection"] = "close"
        if ends_on_drain(request, response):
            label = f"{request.method} {request.path}"
            stream = self.streams.open(response.write_eof, label, request)
            self._streams[key] = (stream, response)

    def _close_websocket(self, key: RequestHandler, ws: web.WebSocketResponse) -> None:
        if ws.closed or key in self._ws_closing:
            return
        self._ws_closing.add(key)
        closer = asyncio.create_task(
            ws.close(code=self._ws_close_code, message=b"server shutting down"),
            name="graceful-ws-close",
        )
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    def inflight(self) -> int:
        """Requests and websocket sessions in flight now."""
        return self.tracker.count

    async def stop_accepting(self) -> None:
        """Close the listener: from now on connections are refused."""
        await close_listeners([self.listener], shared=self._shared_listener)

    async def drain(self) -> None:
        """Close idle connections, close websockets, run ``on_shutdown``, wait for the work."""
        self.draining.set()
        for key, ws in list(self._websockets.items()):
            self._close_websocket(key, ws)
        await self.streams.end_all()
        await asyncio.gather(
            close_connections(Connections(self._connections, self.tracker), self.tracker),
            self.app.shutdown(),
        )
        await self.tracker.wait_idle()

    async def abort(self) -> int:
        """Cancel the handlers still running and drop every connection; return the count cut."""
        cut = self.tracker.count
        for closer in list(self._closers):
            closer.cancel()
        # Named now rather than per request (the watchdog's list of pending tasks shows it).
        for task, request in list(self.tracker.requests.items()):
            if not task.done():
                name_request(task, request.method, request.path)
                self.tasks.add(task)
        self._cutting = True
        log_requests_cut(self.name, [task.get_name() for task in self.tasks])
        deadline = abort_deadline(self._runtime.budget)
        await self.tasks.cancel_all(deadline)
        await self._end_connections(deadline)
        return cut

    async def _end_connections(self, deadline: float) -> None:
        # Close every connection and end aiohttp's task of each: they are the server's, not
        # work the app left running (one may still be reading a body its handler did not read,
        # for aiohttp's lingering close, long after its response was written). Cancelled, they
        # are no left-over work for the runtime.
        connections = self._connections()
        tasks = connection_tasks(connections)
        for conn in connections:
            conn.force_close()
        for task in tasks:
            task.cancel()
        if tasks:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            await asyncio.wait(tasks, timeout=timeout)

    async def _cleanup(self) -> None:
        # The close phase: whatever connection outlived the drain ends with the server.
        await self._end_connections(asyncio.get_running_loop().time() + _CONNECTIONS_GRACE)
        await self.app.cleanup()


async def serve(
    runtime: Runtime,
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    name: str = "http",
    keepalive_timeout: float = 75.0,
    access_log: bool = True,
    backlog: int = 128,
    ws_close_code: int = 1001,
    sock: socket.socket | None = None,
    path: str | None = None,
) -> AiohttpServer:
    """Serve ``app`` with aiohttp's ``AppRunner`` on a listener; the runtime stops it.

    Runs the app's ``on_startup`` signal and cleanup contexts, opens the listener and returns. The
    app must not be frozen yet (the server is stored in it, for :func:`draining`). Nothing
    is added to its middlewares or signals: the server's request handler and request class
    carry the drain's per-request work.

    Args:
        runtime: the runtime that owns the signals and the stop.
        app: the application.
        host: address to bind (``0.0.0.0`` in a container).
        port: port to bind; 0 picks a free one (see :attr:`AiohttpServer.port`).
        name: the server's label in logs, metrics (``server=name``) and the shutdown report.
        keepalive_timeout: seconds an idle keep-alive connection is kept while serving.
        access_log: log each request on ``aiohttp.access``, as ``web.run_app`` does by
            default, in the shape of :class:`AccessLogger` (with the duration).
        backlog: listen backlog.
        ws_close_code: close code sent to open websockets on a stop.
        sock: serve on this listening socket instead of binding ``host`` and ``port`` (what
            ``web.SockSite`` does; a socket shared by a supervisor). Closed in ``stop_accept``.
        path: bind a Unix domain socket at this path instead of ``host`` and ``port``.

    Returns:
        The started server.

    .. versionadded:: 0.1
    """
    server = AiohttpServer(app, runtime=runtime, name=name, ws_close_code=ws_close_code)
    server._access_log = access_log
    app[_SERVER_KEY] = server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        keepalive_timeout=keepalive_timeout,
        access_log_class=AccessLogger,
        access_log=access_logger if access_log else None,
    )
    # Tasks on_startup and cleanup contexts start (a poller) are the app's background work.
    with runtime.capture_background():
        await runner.setup()
    server.runner = runner
    runtime.on_shutdown(server._cleanup, phase=Phase.CLOSE, name=f"{name}.cleanup")
    assert runner.server is not None
    # Before the listener opens: each connection copies both when it is made.
    handler = runner.server
    handler.request_handler = server._handler(handler.request_handler)
    handler.request_factory = partial(
        app._make_request, _cls=request_class(app, runtime, server._prepared)
    )
    loop = asyncio.get_running_loop()
    if sock is not None:
        server.listener = await loop.create_server(runner.server, sock=sock, backlog=backlog)
        server._shared_listener = True  # possibly with other processes (a supervisor's)
    elif path is not None:
        server.listener = await loop.create_unix_server(runner.server, path, backlog=backlog)
    else:
        server.listener = await loop.create_server(runner.server, host, port, backlog=backlog)
    runtime.add_drainable(server)
    return server

"""The ASGI middleware of :mod:`graceful.integrations.asgi`: the per-request part of the drain.

Tracks what is in flight, adds ``Connection: close`` once a stop has begun, closes websockets
when the drain begins, answers a request cut before its response with 503, writes the access
line, and publishes a :class:`ServerStatus` in ``scope["graceful"]`` for the app. Public names
are re-exported by :mod:`graceful.integrations.asgi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from graceful.draining import WorkTracker
from graceful.integrations._access import log_access
from graceful.integrations._ending import (
    EndingStream,
    EndingStreams,
    StreamEnded,
)

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = [
    "SCOPE_KEY",
    "ASGIApp",
    "GracefulMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "ServerStatus",
    "draining",
    "end_on_drain",
    "status",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key under which the middleware publishes the :class:`ServerStatus`.
SCOPE_KEY = "graceful"

_CLOSE_HEADER = (b"connection", b"close")

#: Scope keys: the app awaits ``draining(scope)`` (its stream ends itself), or chose whether
#: the drain ends its response (``end_on_drain``).
_LISTENS = "graceful.listens"
_END_ON_DRAIN = "graceful.end_on_drain"

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
    """
    scope[_LISTENS] = True  # the app ends its stream itself: the drain leaves it to do so
    found = scope.get(SCOPE_KEY)
    if isinstance(found, ServerStatus):
        return found.draining
    return asyncio.Event()


def end_on_drain(scope: Scope, end: bool = True) -> None:
    """Choose whether the drain ends this request's streaming response at its start.

    An event stream (``text/event-stream``) that does not await :func:`draining` is ended by
    default: its last chunk is sent (the client's ``EventSource`` reconnects at once) and its
    generator is closed (its ``finally`` runs), a clean end. Call ``end_on_drain(scope)`` for
    another endless stream to be ended the same way, ``end_on_drain(scope, False)`` for an event
    stream to be left running until the drain deadline. Has no effect where graceful does not
    serve the app.

    .. versionadded:: 0.1
    """
    scope[_END_ON_DRAIN] = end


_CONTENT_TYPE = b"content-type"
_EVENT_STREAM = b"text/event-stream"  # as ``_ending.is_event_stream``, inline: every response


def _ends_on_drain(scope: Scope, headers: Any) -> bool:
    # Runs for every response: the common case (lower-case names, not an event stream) is
    # one dictionary lookup and one comparison per header.
    chosen = scope.get(_END_ON_DRAIN)
    if chosen is not None:
        return bool(chosen)
    for name, value in headers:
        if name == _CONTENT_TYPE or (len(name) == 12 and name.lower() == _CONTENT_TYPE):
            return value[:17].lower() == _EVENT_STREAM and _LISTENS not in scope
    return False


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
    - ends open event streams when the drain begins (:func:`end_on_drain`);
    - publishes a :class:`ServerStatus` in ``scope["graceful"]``;
    - with ``access_log``, writes one line per HTTP request once its response has ended, on
      the ``uvicorn.access`` logger: ``"event": "http.request"`` with ``method``, ``path``,
      ``status``, ``duration_s`` and ``client`` as fields (see ``_access``).

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
        self.streams = EndingStreams(name)
        self.status = ServerStatus(runtime, name, self.tracker)
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
        if kind == "websocket":
            self.tracker.begin()
            try:
                await self._websocket(scope, receive, send)
            finally:
                self.tracker.end()
            return
        # Everything below runs for every HTTP request: the state is in this frame's cells
        # (no object per request), and there is no lookup of the current task (the server
        # cancels its own request tasks at the deadline).
        status: int | None = None  # the response's, once it has started
        stream: EndingStream | None = None  # when the drain is to end this response
        runtime = self.runtime
        streams = self.streams

        async def send_with_close(message: Message) -> None:
            nonlocal status, stream
            if stream is not None:
                if stream.ended:
                    # The drain ended this response: tell an app that writes on (one that
                    # swallowed the cancellation), as a closed connection would.
                    raise StreamEnded("the response was ended by the server's drain")
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    streams.close(stream)
            elif message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                # Decided when the headers leave, so a response that started before the stop
                # keeps its keep-alive and the server closes the connection after it instead.
                if runtime.stopping:
                    headers = list(headers)
                    if _CLOSE_HEADER not in headers:
                        headers.append(_CLOSE_HEADER)
                    message = {**message, "headers": headers}
                if _ends_on_drain(scope, headers):
                    await send(message)
                    stream = self._open_stream(scope, send)
                    return
            await send(message)

        # perf_counter, not the loop's clock: uvloop's counts whole milliseconds.
        began = time.perf_counter() if self.access_log else 0.0
        failed = True
        self.tracker.begin()
        try:
            await self.app(scope, receive, send_with_close)
            failed = False
        except asyncio.CancelledError:
            if stream is not None and stream.ended:
                # The drain ended this stream (its last chunk is sent) and cancelled the app
                # to close its generator: a clean end.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                failed = False
            elif not self.aborting:
                raise
            # Cut at the drain deadline by abort(): an answer the client can act on
            # instead of uvicorn's 500 and a traceback for a cancellation we caused.
            elif status is None:
                await _send_cut_response(send)
                status = 503
                failed = False
        except Exception:
            if stream is None or not stream.ended:
                raise
            failed = False  # a write after the drain ended the stream (``StreamEnded``)
        finally:
            self.tracker.end()
            if stream is not None:
                streams.close(stream)
            if self.access_log:
                self._log_access(scope, status, failed, began)

    def _open_stream(self, scope: Scope, send: Send) -> EndingStream:
        async def finish() -> None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        return self.streams.open(finish, f"{scope['method']} {scope['path']}", scope)

    def _log_access(self, scope: Scope, started: int | None, failed: bool, began: float) -> None:
        # An app that failed before answering gets uvicorn's 500; one that returned without
        # answering (its client left) has no status to log. One that failed or was cut after
        # its response started logged that status: ``complete`` says the body was not.
        status = started if started is not None else 500 if failed else None
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
            duration=time.perf_counter() - began,
            complete=not (failed and started is not None),
        )

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

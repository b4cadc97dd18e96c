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
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from graceful.draining import WorkTracker
from graceful.integrations._access import log_access

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
        began = asyncio.get_running_loop().time() if self.access_log else 0.0
        failed = True
        # begin/end rather than a context manager, and no lookup of the current task: this
        # runs for every request (the server cancels its own request tasks at the deadline).
        self.tracker.begin()
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
                failed = False
        finally:
            self.tracker.end()
            if self.access_log and kind == "http":
                self._log_access(scope, started, failed, began)

    def _log_access(self, scope: Scope, started: list[int], failed: bool, began: float) -> None:
        # An app that failed before answering gets uvicorn's 500; one that returned without
        # answering (its client left) has no status to log. One that failed or was cut after
        # its response started logged that status: ``complete`` says the body was not.
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
            complete=not (failed and started),
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

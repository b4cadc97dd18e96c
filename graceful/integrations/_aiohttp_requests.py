"""The per-request part of :mod:`graceful.integrations.aiohttp`, and the drain's view of it.

What runs for every request is kept to a few stores, with no aiohttp middleware and no signal
(one middleware makes aiohttp build and run its middleware chain for every request, a signal is
a coroutine per response):

- :class:`RequestsInFlight`: the requests in the app, each under its task; the server's request
  handler stores and deletes the entry itself, and wakes waiters only when there are some;
- :func:`request_class`: aiohttp's request, whose response prepare step does what the server's
  ``on_response_prepare`` handler did (``Connection: close`` once a stop has begun, event
  streams registered to be ended at the drain), with two checks for the usual response;
- :class:`Connections`: the server's connections as ``closing.close_connections`` sees them;
- :func:`connection_tasks`: aiohttp's own task of each connection, ended with the connections;
- :func:`complete` and the answers written while the request is still in flight: aiohttp's own
  error responses (:func:`error_response`, :func:`not_a_response`), the 503 of a request cut
  at the drain deadline (:func:`cut_response`).
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from graceful.closing import ConnectionState
from graceful.draining import WorkTracker
from graceful.integrations._ending import is_event_stream

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = [
    "END_ON_DRAIN",
    "LISTENS",
    "Connections",
    "RequestsInFlight",
    "complete",
    "connection_tasks",
    "current_task_of",
    "cut_response",
    "ends_on_drain",
    "error_response",
    "not_a_response",
    "request_class",
]

#: Request keys: the handler awaits ``draining(request)`` (its stream ends itself), or chose
#: whether the drain ends its response (``end_on_drain``).
LISTENS: web.RequestKey[bool] = web.RequestKey("graceful_listens", bool)
END_ON_DRAIN: web.RequestKey[bool] = web.RequestKey("graceful_end_on_drain", bool)


def current_task_of(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Task[Any] | None]:
    """``asyncio.current_task`` for ``loop``, as cheap as the interpreter allows.

    On Python 3.11 ``asyncio.current_task`` is a Python function (its C version came with
    3.12) that looks the loop up and reads ``asyncio.tasks._current_tasks``, the C dictionary
    the tasks themselves keep: called for every request, that frame is about 2 % of the CPU
    of a small request (py-spy). Reading the dictionary directly is the same answer, without
    it (``partial`` of the dictionary's ``get``: C calls only). Where the function is C
    already, or the dictionary is gone, the function is used.
    """
    if isinstance(asyncio.current_task, types.BuiltinFunctionType):
        return asyncio.current_task
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if not isinstance(tasks, dict):
        return asyncio.current_task
    return partial(tasks.get, loop)


class RequestsInFlight(WorkTracker):
    """The requests in the app, each under the task serving it: a :class:`WorkTracker`.

    The server's request handler keeps it: it stores ``requests[task] = request`` when a request
    reaches the app and deletes it (adding one to ``ended``) when its response is sent, calling
    :meth:`changed` after each only when :attr:`waiters` is not empty. ``begin`` and ``end``
    are not used: a unit here is a request, known by its task.

    Attributes:
        requests: task -> request, for the requests in the app now.
        ended: requests that have left the app since creation.
        waiters: futures of those waiting for a change (``wait_changed``).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.requests: dict[asyncio.Task[Any], web.BaseRequest] = {}
        self.ended = 0
        self.waiters: list[asyncio.Future[None]] = []

    @property
    def count(self) -> int:
        """Requests in the app now."""
        return len(self.requests)

    @property
    def total(self) -> int:
        """Requests that have reached the app since creation."""
        return self.ended + len(self.requests)

    def begin(self) -> None:
        """Not used: the request handler stores the request under its task."""
        raise TypeError("RequestsInFlight counts requests by task: store them in .requests")

    def end(self) -> None:
        """Not used: the request handler deletes the request's entry."""
        raise TypeError("RequestsInFlight counts requests by task: delete them from .requests")

    def changed(self) -> None:
        """Wake those waiting for a change (a request reached the app or left it)."""
        # Emptied in place: the request handler holds this very list.
        waiters = self.waiters[:]
        self.waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_changed(self) -> None:
        """Return the next time a request reaches the app or leaves it."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    async def wait_idle(self) -> None:
        """Return once no request is in the app (at once when none is)."""
        while self.requests:
            await self.wait_changed()


def request_class(
    app: web.Application,
    runtime: Runtime,
    prepared: Callable[[web.BaseRequest, web.StreamResponse], None],
) -> type[web.Request]:
    """aiohttp's request, whose response prepare step also calls ``prepared``.

    Called once the app is frozen: when neither it nor a sub-app has an ``on_response_prepare``
    handler, aiohttp's own step (a coroutine walking the apps) is skipped. The usual response,
    a ``web.Response`` before any stop, costs two checks: its body is whole, written right after
    this step, so there is no stream to end, and it keeps its keep-alive.
    """
    signals = _sends_prepare_signal(app)
    # ``runtime.stopping`` without the property: the runtime's own event (a call less).
    stopping = runtime._stop_requested.is_set
    plain = web.Response

    class GracefulRequest(web.Request):
        async def _prepare_hook(self, response: web.StreamResponse) -> None:
            if signals:
                await super()._prepare_hook(response)  # the app's handlers first
            if type(response) is not plain or stopping():
                prepared(self, response)

    return GracefulRequest


def _sends_prepare_signal(app: web.Application) -> bool:
    if app.on_response_prepare:
        return True
    subapps = getattr(app, "_subapps", None)  # aiohttp's; where it is not, assume there are
    return subapps is None or any(_sends_prepare_signal(sub) for sub in subapps)


def ends_on_drain(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    """Whether the drain ends this response at its start (see ``end_on_drain``)."""
    # A request holding no keys (the usual case) chose nothing: one header lookup, where
    # ``request.get`` of a key it lacks raises and catches a KeyError.
    content_type = response.headers.get(hdrs.CONTENT_TYPE, "")
    if not len(request):
        return is_event_stream(content_type)
    chosen = request.get(END_ON_DRAIN)
    if chosen is not None:
        return bool(chosen)
    if LISTENS in request:
        return False
    return is_event_stream(content_type)


class Connections:
    """The connections of an aiohttp server, as ``close_connections`` sees them.

    Args:
        connections: the server's open connections now.
        tracker: its requests in flight (a connection with one in the app is busy).
    """

    def __init__(
        self, connections: Callable[[], list[RequestHandler]], tracker: RequestsInFlight
    ) -> None:
        self._connections = connections
        self._tracker = tracker
        self._busy: set[object] = set()
        self._busy_at = (-1, -1)

    def open_connections(self) -> list[RequestHandler]:
        return self._connections()

    def _busy_connections(self) -> set[object]:
        # Derived from the requests in flight when they changed (no count per connection is
        # kept per request): the (total, count) pair is new after every request in and out.
        tracker = self._tracker
        now = (tracker.total, tracker.count)
        if now != self._busy_at:
            self._busy = {request.protocol for request in tracker.requests.values()}
            self._busy_at = now
        return self._busy

    def state_of(self, conn: RequestHandler) -> ConnectionState:
        if conn in self._busy_connections():
            return ConnectionState.BUSY
        # aiohttp has no public view of a connection's state. Its request loop
        # (``RequestHandler.start``) counts the requests parsed, queues them, and waits on
        # ``_waiter`` for the next one only when it is idle; otherwise it is handing a request
        # to its task (on Python 3.11 the task starts an iteration later) or finishing one.
        if getattr(conn, "_request_count", 1) == 0:
            return ConnectionState.FRESH
        if getattr(conn, "_messages", None) or getattr(conn, "_waiter", True) is None:
            return ConnectionState.RECEIVED
        return ConnectionState.IDLE

    def transport_of(self, conn: RequestHandler) -> asyncio.BaseTransport | None:
        return conn.transport

    def close_now(self, conn: RequestHandler) -> None:
        conn.force_close()

    def close_after_response(self, conn: RequestHandler) -> None:
        # Nothing to do: a response prepared since the stop began says ``Connection: close``
        # and aiohttp closes after it; one prepared before leaves the connection idle, closed
        # then as idle. Not ``conn.close()``: from then on aiohttp drops every byte received,
        # the rest of the request's body too, and the handler waits for it until the deadline.
        del conn


def connection_tasks(connections: list[RequestHandler]) -> list[asyncio.Task[Any]]:
    """aiohttp's task of each of ``connections`` (``RequestHandler.start``) still running.

    They are the server's, not the app's left-over work: one may still be reading the rest of a
    body the handler did not read (aiohttp's lingering close) after the handler returned and
    the drain closed its connection. aiohttp drops a connection's reference to its task when
    the connection is lost (and keeps the connection in its server's list until the task ends),
    so the tasks are found by their coroutine's ``self``. Called at a stop, not per request.
    """
    wanted = {id(conn) for conn in connections}
    found = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if frame is None or getattr(coro, "__name__", None) != "start" or task.done():
            continue
        if id(frame.f_locals.get("self")) in wanted:
            found.append(task)
    return found


_CUT_TEXT = "request cut: the server is shutting down and its budget ran out\n"


async def complete(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Write ``response`` (but a websocket's) to its end, as aiohttp would after the handler.

    Sent here rather than after the handler returns, so that "nothing in flight" means every
    answer has been written, not just computed.
    """
    if isinstance(response, web.WebSocketResponse):
        return
    try:
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left; aiohttp sees it again and handles it as usual


async def error_response(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
    """aiohttp's answer to the app's exception (``RequestHandler._handle_request``), written.

    The same log lines, the same 504 (a timeout) or 500 page with ``Connection: close``, built
    and written while the request is still in flight: the app's prepare handlers may await,
    and the drain must wait for them. Call it in the ``except`` block (the 500 page of debug
    mode shows the traceback being handled).
    """
    protocol = request.protocol
    if isinstance(exc, asyncio.TimeoutError):
        protocol.log_debug("Request handler timed out.", exc_info=exc)
        response = protocol.handle_error(request, 504)
    else:
        response = protocol.handle_error(request, 500, exc)
    await complete(request, response)
    return response


def not_a_response(request: web.BaseRequest, returned: object) -> web.StreamResponse:
    """aiohttp's words and 500 for a handler that returned no response (``finish_response``).

    Logged in the same ``except AttributeError`` as aiohttp's, so the line is the same. An
    object with a ``prepare`` of its own is returned as it is: aiohttp calls it.
    """
    try:
        _ = returned.prepare  # type: ignore[attr-defined]
    except AttributeError:
        if returned is None:
            request.protocol.log_exception("Missing return statement on request handler")
        else:
            request.protocol.log_exception(
                f"Web-handler should return a response instance, got {returned!r}"
            )
        exc = web.HTTPInternalServerError()
        return web.Response(
            status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers
        )
    return returned  # type: ignore[return-value]


async def cut_response(request: web.BaseRequest) -> web.StreamResponse:
    """The 503 of a request cut at the drain deadline before its response started, written.

    As on the ASGI side: an answer the client can act on instead of a dropped connection,
    logged by aiohttp as any response.
    """
    response = web.Response(status=503, text=_CUT_TEXT)
    response.force_close()
    await complete(request, response)
    return response

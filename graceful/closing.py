"""Closing a server's listeners and connections at their moment: refuse new, reset none.

The algorithm every server integration shares for ``stop_accepting()`` and ``drain()`` (the
contract itself is in :mod:`graceful.draining`): :func:`close_listeners` refuses new
connections before it accepts what the kernel had queued, so none made before is lost;
:func:`close_connections` closes each client connection when it is safe: idle keep-alive ones
once nothing is in flight (at once when nothing is), busy ones after their response
(``Connection: close``), fresh ones after a short grace for their first request.
"""

from __future__ import annotations

import array
import asyncio
import enum
import fcntl
import termios
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

from graceful.backlog import backlog_waiting, refuse_new_connections
from graceful.draining import WorkTracker

if TYPE_CHECKING:
    from asyncio.trsock import TransportSocket

__all__ = [
    "FIRST_REQUEST_GRACE",
    "ClientConnections",
    "ConnectionState",
    "close_connections",
    "close_listeners",
    "unread_bytes",
]

#: Longest :func:`close_listeners` lets the loop accept what the kernel had queued (seconds): a
#: backlog of thousands is accepted in milliseconds; this bounds a server that stopped accepting.
BACKLOG_DRAIN_MAX = 1.0

#: Seconds a connection accepted without a request yet is kept open once the drain begins,
#: waiting for its first request (see :func:`close_connections`).
FIRST_REQUEST_GRACE = 0.5

# Rounds of reads a parsed request gets to reach the app (one or two suffice): a bound.
_TRANSIT_SPINS = 8


def _sockets(server: asyncio.AbstractServer) -> list[TransportSocket]:
    # ``sockets`` is on asyncio's and uvloop's servers, not on the abstract class.
    return list(getattr(server, "sockets", None) or ())


async def close_listeners(
    servers: Iterable[asyncio.AbstractServer | None], *, shared: bool = False
) -> None:
    """Close listening servers: new connections are refused and none already made is lost.

    Closing a listener resets the connections whose handshake the kernel completed and that
    still wait in its backlog; and the kernel completes handshakes up to the very ``close()``.
    So first new connection attempts are dropped (``backlog.refuse_new_connections``): from
    then on the backlog can only shrink. The loop, whose servers still accept, runs until it is
    empty (up to :data:`BACKLOG_DRAIN_MAX`; uvloop accepts about one connection per
    iteration), and those connections are drained like the others. Then, on asyncio's own
    (selector) loop, the accept handler is removed and the accepts under way get one more
    iteration: Python 3.11 silently drops a connection accepted in the iteration just before
    ``Server.close()`` (the transport setup fails an assertion in ``Server._attach``, and the
    socket stays open, unserved, until the process exits). Only then are the listeners closed.

    A listener that cannot be filtered (a Unix socket), or a ``shared`` one, gets two loop
    iterations instead (one to see it readable and accept, one to set the transports up); a
    connection that arrives after them is reset by the close.

    Not ``wait_closed()``: since Python 3.12 it also waits for every connection to end, which
    is the drain's job, under the drain's deadline.

    Args:
        servers: the listeners; ``None`` entries (a server never started) are skipped.
        shared: the sockets may be held by other processes too (a listener given by a
            supervisor): they are not filtered here, since a filter on the socket would refuse
            new connections for every process, and the backlog may never be empty while the
            others accept. Whoever stops the whole group refuses new connections first.

    .. versionadded:: 0.1
    """
    listeners = [server for server in servers if server is not None]
    if not listeners:
        return
    loop = asyncio.get_running_loop()
    sockets = [sock for server in listeners for sock in _sockets(server)]
    refused = [] if shared else [refuse_new_connections(sock) for sock in sockets]
    if refused and all(refused):
        give_up_at = loop.time() + BACKLOG_DRAIN_MAX
        while any(backlog_waiting(sock) for sock in sockets) and loop.time() < give_up_at:
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    if isinstance(loop, BaseSelectorEventLoop):
        for sock in sockets:
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
    for server in listeners:
        server.close()


class ConnectionState(enum.Enum):
    """Where a client connection stands, as :func:`close_connections` sees it.

    .. versionadded:: 0.1
    """

    #: No request in the server's hands: none received yet (its first one may be on the
    #: wire), or only part of one.
    FRESH = "fresh"
    #: A request is in the server's hands on its way to the app (parsed, its task not started
    #: yet): within a loop iteration or two it is in the app, or the connection has settled.
    RECEIVED = "received"
    #: A request is in the app, counted by the server's :class:`WorkTracker`.
    BUSY = "busy"
    #: Had a request answered; none in progress.
    IDLE = "idle"


_Conn = TypeVar("_Conn")


class ClientConnections(Protocol[_Conn]):
    """One server's client connections, as :func:`close_connections` needs to see them.

    .. versionadded:: 0.1
    """

    def open_connections(self) -> Iterable[_Conn]:
        """The open client connections (not websockets: they are closed with their code)."""
        ...

    def state_of(self, conn: _Conn) -> ConnectionState:
        """Where ``conn`` stands (bytes still unread in the kernel are checked separately)."""
        ...

    def transport_of(self, conn: _Conn) -> asyncio.BaseTransport | None:
        """The connection's transport; ``None`` once it is gone."""
        ...

    def close_now(self, conn: _Conn) -> None:
        """Close a connection with no request in progress (a clean FIN)."""
        ...

    def close_after_response(self, conn: _Conn) -> None:
        """Close a busy connection once its response has been sent."""
        ...


def unread_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes the kernel has received on this connection that the server has not read yet.

    Closing a socket with unread bytes makes the kernel send a reset instead of a FIN.

    .. versionadded:: 0.1
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.fileno() < 0:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except OSError:
        return 0
    return count[0]


async def _let_reads_in() -> None:
    # One iteration for the loop to read what has arrived (the parser runs in the read
    # callback), one more for the tasks those reads wake.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _sort(
    clients: ClientConnections[_Conn], conns: Iterable[_Conn], *, close_idle: bool, told: set[int]
) -> tuple[list[_Conn], bool, bool]:
    """Tell busy connections (once: ``told``) to close after their response, close the idle
    ones if ``close_idle``; return those still open, and whether one has a request in
    transit (``RECEIVED``) or may get one (``FRESH``, or bytes waiting unread)."""
    waiting = []
    in_transit = fresh = False
    for conn in conns:
        transport = clients.transport_of(conn)
        if transport is None or transport.is_closing():
            continue
        state = clients.state_of(conn)
        if state is ConnectionState.BUSY:
            if id(conn) not in told:
                told.add(id(conn))
                clients.close_after_response(conn)
        elif state is ConnectionState.IDLE and not unread_bytes(transport):
            if close_idle:
                clients.close_now(conn)
                continue
        else:
            in_transit = in_transit or state is ConnectionState.RECEIVED
            fresh = fresh or state is not ConnectionState.RECEIVED
        waiting.append(conn)
    return waiting, in_transit, fresh


def _no_request_in_app(clients: ClientConnections[_Conn], conn: _Conn) -> bool:
    state = clients.state_of(conn)
    if state is ConnectionState.IDLE:
        return bool(unread_bytes(clients.transport_of(conn)))
    return state is not ConnectionState.BUSY


async def close_connections(
    clients: ClientConnections[_Conn], tracker: WorkTracker, *, grace: float = FIRST_REQUEST_GRACE
) -> None:
    """Close each client connection at its moment, so that no request on its way is lost.

    Called as the drain begins, once the listeners are closed. The loop first gets two
    iterations to read and parse what has arrived; then:

    - a busy connection is told to close after its response (which says ``Connection:
      close``); if that response had begun with keep-alive, it is idle after it;
    - an idle keep-alive connection (a request answered, none in progress, no byte unread in
      the kernel) is closed with a clean FIN once no work is in flight on the server (at once
      when none is). Until then the process cannot exit anyway: its client, which cannot know
      of the stop before a ``Connection: close`` or a FIN, may be sending its next request
      right now, and that request is answered (with ``Connection: close``) instead of being
      reset by a close it crossed: the keep-alive race, common on a starved machine;
    - a fresh one (accepted, no request yet: the listeners closed a moment after accepting
      it) or one whose request has arrived but is not in the app yet is left open until its
      request reaches the app (it is busy then) or for ``grace`` seconds, and then closed.
      Closing it at once would make the kernel reset the client's request instead of
      answering it: at once for bytes already waiting unread, or when they land.

    Returns once every connection is closed or closing. The runtime cancels the drain at its
    deadline, so no wait here runs past it.

    Args:
        clients: the server's connections, where each stands, and how to close it.
        tracker: the server's work in flight: a request reaching the app or ending ends a wait.
        grace: seconds a connection without a request in the app is given to get one there.

    .. versionadded:: 0.1
    """
    await _let_reads_in()
    loop = asyncio.get_running_loop()
    grace_end = loop.time() + grace
    spins = 0  # rounds of reads in a row with a request still in transit
    told: set[int] = set()
    waiting: Iterable[_Conn] = clients.open_connections()
    while True:
        idle = tracker.count == 0
        waiting, in_transit, fresh = _sort(clients, waiting, close_idle=idle, told=told)
        if not waiting:
            return
        if (fresh and loop.time() >= grace_end) or spins >= _TRANSIT_SPINS:
            # A request that landed as the grace ended (or while the loop was held up) gets
            # the iterations it needs to reach the app; what has none there then is closed.
            # Idle ones go on waiting for the work in flight.
            await _let_reads_in()
            for conn in waiting:
                if _no_request_in_app(clients, conn):
                    clients.close_now(conn)
            spins = 0
        elif in_transit:
            spins += 1
            await _let_reads_in()  # it gets there without more input: no event to wait for
        else:
            spins = 0
            # Until a request reaches the app or ends (a unit of work begins or ends), or a
            # fresh connection's grace runs out. With no work in flight, what is still open a
            # grace later is closed (a response the server finishes outside the app).
            until = grace_end if fresh else loop.time() + grace if idle else None
            try:
                async with asyncio.timeout_at(until):
                    await tracker.wait_changed()
            except TimeoutError:
                if not fresh:
                    for conn in waiting:
                        clients.close_now(conn)

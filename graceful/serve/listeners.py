"""One listening socket shared by a supervisor and its workers, closed without resetting anyone.

Who holds the socket: the supervisor binds it (it does not listen: the first worker's server
does, so nothing queues before somebody serves) and every worker inherits a copy. It is one
socket in the kernel, whatever the number of descriptors, and the kernel resets the
connections in its listen backlog when the *last* descriptor closes. Two ways that goes wrong,
both seen in peers:

- the supervisor keeps its copy while the workers close theirs: the kernel goes on completing
  handshakes into a backlog nobody accepts from, and resets them all when the supervisor exits
  (hypercorn's and gunicorn's arbiter);
- a worker closes the last copy with connections still queued (uvloop accepts about one per
  loop iteration, so ``close_listeners``'s two iterations leave the rest).

So, on a stop:

1. the supervisor closes its copy at once (it starts no worker during a stop);
2. each worker, in its ``stop_accept`` phase and before its server closes the listener
   (:class:`BacklogGuard` is registered before the server), makes the socket refuse new
   connections and keeps accepting until the backlog is empty.

"Refuse new connections" without closing: a classic BPF socket filter that drops bare SYNs
(:func:`refuse_new_connections`). It acts on the socket, so on every worker's copy at once;
segments of handshakes already under way, and of accepted connections, pass. A client whose
SYN is dropped retransmits it (after 1 s on Linux) and is refused once the last copy has
closed: it never sees a connection that is then reset. From then on the backlog can only
shrink, so once a worker finds it empty it stays empty, and whichever copy closes last closes
an empty queue. A connection whose handshake is still in flight when the last copy closes (one
round trip) is reset as it would be by any close.

Unix sockets have no filter: the backlog is drained the same way, but one arriving during the
drain can still be reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import socket
import stat
import struct

from graceful.logs import get_logger
from graceful.serve.options import ServeOptions

__all__ = [
    "BacklogGuard",
    "backlog_waiting",
    "bind_listener",
    "refuse_new_connections",
]

#: ``SO_ATTACH_FILTER`` from <asm-generic/socket.h> (the socket module does not export it).
_SO_ATTACH_FILTER = 26

#: Longest the guard keeps accepting (seconds): a backlog of thousands drains in tens of
#: milliseconds; this bounds a server that stopped accepting (the phase deadline bounds it too).
BACKLOG_DRAIN_MAX = 1.0
#: Loop iterations given back to back before the guard waits a millisecond between checks.
_SPIN_ITERATIONS = 200


def _instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


# A socket filter sees a TCP segment from its TCP header: byte 13 holds the flags.
_DROP_BARE_SYN = b"".join(
    [
        _instruction(0x30, 0, 0, 13),  # ldb [13]          the flags byte
        _instruction(0x54, 0, 0, 0x12),  # and #0x12        keep SYN and ACK
        _instruction(0x15, 0, 1, 0x02),  # jeq #0x02        SYN without ACK: a new connection
        _instruction(0x06, 0, 0, 0),  # ret #0              drop it
        _instruction(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1    everything else passes whole
    ]
)
_FILTER = ctypes.create_string_buffer(_DROP_BARE_SYN, len(_DROP_BARE_SYN))
# struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native alignment.
_FPROG = struct.pack("@HP", len(_DROP_BARE_SYN) // 8, ctypes.addressof(_FILTER))


def bind_listener(options: ServeOptions) -> socket.socket:
    """The socket the workers share, bound per ``options`` but not listening yet.

    ``fd`` is taken as it is (already listening, typically). A stale Unix socket file at
    ``uds`` is replaced, and the new one made writable by all, as uvicorn does.

    Raises:
        OSError: the address cannot be bound.
    """
    if options.fd is not None:
        return socket.socket(fileno=options.fd)
    if options.uds is not None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(options.uds).st_mode):
                os.remove(options.uds)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(options.uds)
            os.chmod(options.uds, 0o666)
        except OSError:
            sock.close()
            raise
        return sock
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.host, options.port))
    except OSError:
        sock.close()
        raise
    return sock


def refuse_new_connections(sock: socket.socket) -> bool:
    """Drop new connection attempts (bare SYNs) on a TCP listener, for every process holding it.

    Returns:
        False when it cannot be done: not a TCP socket, or the kernel refused the filter.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _FPROG)
    except OSError:
        return False
    return True


def backlog_waiting(sock: socket.socket) -> bool:
    """True while connections wait in the listen backlog (a listener polls readable then)."""
    if sock.fileno() < 0:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class BacklogGuard:
    """A worker's part in closing the shared listener: a ``Drainable`` registered first.

    In ``stop_accept`` it runs before the server's own ``stop_accepting``: it makes the socket
    refuse new connections, then yields to the loop (whose server is still accepting) until
    the backlog is empty. It has no work of its own to drain.

    Args:
        sock: this worker's copy of the shared listener.

    .. versionadded:: 0.1
    """

    name = "shared-listener"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.log = get_logger()

    def inflight(self) -> int:
        return 0

    async def stop_accepting(self) -> None:
        filtered = refuse_new_connections(self.sock)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + BACKLOG_DRAIN_MAX
        spins = 0
        while backlog_waiting(self.sock):
            if loop.time() >= give_up_at:
                self.log.warning(
                    "listener.backlog_not_drained",
                    problem="connections still queued: the server is not accepting them",
                )
                return
            spins += 1
            await asyncio.sleep(0 if spins < _SPIN_ITERATIONS else 0.001)
        self.log.debug("listener.backlog_drained", filtered=filtered, iterations=spins)

    async def drain(self) -> None:
        return None

    async def abort(self) -> int:
        return 0

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

An inherited socket (``--fd``) outlives the service: its owner (systemd, a parent that
restarts the server) keeps it, and the next server listens on it. The filter must not: the
supervisor keeps its copy through the stop and, once every worker is gone, takes the filter
off (:func:`accept_new_connections`), so new connections queue for the next server again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from graceful.backlog import backlog_waiting, refuse_new_connections
from graceful.logs import get_logger
from graceful.serve.options import ServeOptions

__all__ = [
    "BacklogGuard",
    "SocketFile",
    "accept_new_connections",
    "bind_listener",
    "inherited_listener",
    "taken_by_another",
]

#: Longest the guard keeps accepting (seconds): a backlog of thousands drains in tens of
#: milliseconds; this bounds a server that stopped accepting (the phase deadline bounds it too).
BACKLOG_DRAIN_MAX = 1.0
#: Loop iterations given back to back before the guard waits a millisecond between checks.
_SPIN_ITERATIONS = 200
# From <asm-generic/socket.h>; the socket module does not name it.
_SO_DETACH_FILTER = 27


def bind_listener(options: ServeOptions) -> socket.socket:
    """The socket the workers share, bound per ``options`` but not listening yet.

    ``fd`` is taken as it is (already listening, typically). A stale Unix socket file at
    ``uds`` (nobody listens on it) is replaced, and the new one made writable by all, as
    uvicorn does; a socket another server listens on, and any file that is not a socket, are
    left alone: the bind fails.

    Raises:
        OSError: the address cannot be bound (``EADDRINUSE`` for a path that is taken).
    """
    if options.fd is not None:
        return inherited_listener(options.fd)
    if options.uds is not None:
        _remove_stale_socket(options.uds)
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


def inherited_listener(fd: int) -> socket.socket:
    """The socket given as ``--fd``, once it is known to be one a server can listen on.

    Raises:
        OSError: ``fd`` is not open, not a socket, not a stream socket (a UDP socket), or
            not bound (uvicorn would listen on a random port on every interface).
    """
    sock = socket.socket(fileno=fd)
    problem = None
    if sock.type != socket.SOCK_STREAM:
        problem = "not a stream (TCP or Unix) socket"
    else:
        address = sock.getsockname()
        if (isinstance(address, tuple) and address[1] == 0) or address in ("", b""):
            problem = "the socket is not bound to an address"
    if problem is not None:
        sock.detach()  # the caller's descriptor: left as it was
        raise OSError(errno.EINVAL, problem)
    return sock


def accept_new_connections(sock: socket.socket) -> bool:
    """Take the SYN-dropping filter of the stop off ``sock``: new connections queue again.

    For an inherited listener at the end of a stop: its owner keeps it, and a filter left on
    it would drop every connection to the next server started on it (they time out).

    Returns:
        True when a filter was taken off; False when there was none (or ``sock`` is not a
        TCP socket, or closed).
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
    except OSError:  # ENOENT: no filter on it
        return False
    return True


def taken_by_another(sock: socket.socket) -> OSError | None:
    """Why the shared TCP listener ``sock``, bound but not yet listening, could not listen.

    The supervisor binds without listening, so another process may since have bound the same
    address with ``SO_REUSEADDR`` and listened; the workers' ``listen`` would then fail (and
    uvloop does not say so). A probe bound to the same address fails exactly when something
    listens there; if it is one of our own workers, ``sock`` itself is listening.

    Returns:
        The probe's error when a foreign server listens there, else ``None``.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or _listening(sock):
        return None
    with socket.socket(sock.family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sock.getsockname())
        except OSError as exc:
            return None if _listening(sock) else exc  # a sibling listened meanwhile: fine
    return None


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


@dataclass(frozen=True, slots=True)
class SocketFile:
    """The file of a Unix socket bound here, to remove at exit if it is still ours.

    Attributes:
        path: where it was bound.
        inode: its inode then: the path may have been taken over since (a server started
            after this one stopped listening), and that server's socket must stay.
    """

    path: str
    inode: int

    @classmethod
    def of(cls, sock: socket.socket) -> SocketFile:
        """The file of the bound Unix socket ``sock``."""
        path = sock.getsockname()
        return cls(path, os.stat(path).st_ino)

    def remove(self) -> None:
        """Remove the file unless it is gone or is another socket now."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.remove(self.path)


def _remove_stale_socket(path: str) -> None:
    """Remove the socket file at ``path`` if nobody listens on it.

    Raises:
        OSError: ``EADDRINUSE``: a server answers on it (replacing its file would cut that
            server off from every new client), or the path is not a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, "the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: left by a server that is gone
        else:
            raise OSError(errno.EADDRINUSE, "another server is listening on this socket")
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class BacklogGuard:
    """A worker's part in closing the shared listener: a ``Drainable`` registered first.

    In ``stop_accept`` it runs before the server's own ``stop_accepting``: it makes the socket
    refuse new connections, then yields to the loop (whose server is still accepting) until
    the backlog is empty. It has no work of its own to drain.

    Only when the whole container stops: a worker that stops alone (its ``main`` crashed; it
    is replaced) just closes its copy, since a filter on the shared socket would turn new
    connections away from every other worker too.

    Args:
        sock: this worker's copy of the shared listener.
        container_stopping: True when the stop came from the supervisor.
    """

    name = "shared-listener"

    def __init__(self, sock: socket.socket, container_stopping: Callable[[], bool]) -> None:
        self.sock = sock
        self.container_stopping = container_stopping
        self.log = get_logger()

    def inflight(self) -> int:
        return 0

    async def stop_accepting(self) -> None:
        if not self.container_stopping():
            return
        if not _listening(self.sock):
            # The stop came before this worker's server listened (during the app's startup):
            # no backlog of its own to drain, and a socket that does not listen polls readable
            # (it used to wait a second and warn of a backlog that was not there).
            return
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

"""Closing a listener without resetting the connections queued in its backlog.

The kernel completes TCP handshakes on its own and queues the connections in the listen
backlog until the server accepts them; closing the listener resets whatever is queued, and it
goes on completing handshakes up to the very ``close()``. :func:`refuse_new_connections` stops
new ones from arriving (a socket filter that drops bare SYNs), so that the backlog can only
shrink; :func:`backlog_waiting` tells whether anything is left to accept.
``closing.close_listeners`` is built from both.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncio.trsock import TransportSocket

__all__ = ["backlog_waiting", "refuse_new_connections"]

#: ``SO_ATTACH_FILTER`` from <asm-generic/socket.h> (the socket module does not export it).
_SO_ATTACH_FILTER = 26


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


def refuse_new_connections(sock: socket.socket | TransportSocket) -> bool:
    """Make a TCP listener drop new connection attempts (bare SYNs); handshakes under way finish.

    A classic BPF socket filter, so it acts on the socket (every descriptor of it, in every
    process). A client whose SYN is dropped sends it again (after 1 s on Linux) and is refused
    once the listener has closed: it never holds a connection that is then reset.

    Args:
        sock: the listening socket (``server.sockets[i]`` will do).

    Returns:
        False when it cannot be done: not a TCP socket, or the kernel refused the filter.

    .. versionadded:: 0.1
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _FPROG)
    except OSError:
        return False
    return True


def backlog_waiting(sock: socket.socket | TransportSocket) -> bool:
    """True while connections wait in the listen backlog (a listener polls readable then).

    .. versionadded:: 0.1
    """
    if sock.fileno() < 0:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)

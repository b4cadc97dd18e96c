"""The control link between the supervisor and one worker: a socket pair, framed messages.

Each worker gets one end of an ``AF_UNIX`` stream socket pair (inherited as a file descriptor);
the supervisor keeps the other. Every message is a frame: a 4-byte big-endian length, then the
body. The first frame, supervisor to worker, is the worker's :class:`WorkerStart` (pickled:
both ends are the same program, and the options are dataclasses that JSON would not round-trip
exactly); every later frame is one JSON object with an ``op``:

=============  =====================  ==========================================================
direction      op                     meaning
=============  =====================  ==========================================================
to worker      ``stop``               start the stop; ``exit_by`` is the absolute deadline on
                                      CLOCK_MONOTONIC (system-wide on Linux, so the same number
                                      means the same moment in both processes); ``reason``
to worker      ``skip_drain``         the supervisor got a second stop signal: go to flush
to supervisor  ``ready``              the worker's servers listen and its ``main`` is done
=============  =====================  ==========================================================

End of file either way means the other side is gone: a worker then stops (its supervisor died
without taking it down), and the supervisor learns the exit from the process itself.

The supervisor reads its ends on its event loop (:class:`ControlChannel`). A worker reads its
end on a thread of its own (:func:`messages`), so that a ``stop`` is heard, and the worker's
watchdog armed for ``exit_by``, even while the worker's event loop is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from graceful.config import Config
from graceful.serve.options import ServeOptions

__all__ = [
    "HEADER",
    "ControlChannel",
    "Op",
    "WorkerStart",
    "encode",
    "messages",
    "read_start",
    "recv_exactly",
    "send_start",
]

HEADER = struct.Struct("!I")
#: Largest frame accepted: a start payload is a few kilobytes, a message a few dozen bytes.
MAX_FRAME = 1 << 20

Message = dict[str, Any]


class Op(StrEnum):
    """What a control message says (its ``"op"``); a ``str``, so it is JSON as it is."""

    #: worker → supervisor: the worker serves.
    READY = "ready"
    #: supervisor → worker: stop, with ``exit_by`` (monotonic) and a ``reason``.
    STOP = "stop"
    #: supervisor → worker: a second signal: skip the rest of the drain.
    SKIP_DRAIN = "skip_drain"
    #: the worker's own note that the channel closed: the supervisor is gone.
    GONE = "gone"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStart:
    """What a worker needs to start, sent as the first frame.

    Attributes:
        index: the worker's slot, 0 to N-1 (a replacement takes the slot of the one it replaces).
        spec: the target, ``"module:attr"``.
        options: how to serve it.
        config: the runtime settings (the supervisor's, without the admin server).
        backlog_guard: drain the shared listen backlog before closing the listener (see
            :mod:`graceful.serve.listeners`); off only in the tests' control.
    """

    index: int
    spec: str
    options: ServeOptions
    config: Config
    backlog_guard: bool = True


def encode(message: Message) -> bytes:
    """One message as a frame."""
    return _frame(json.dumps(message).encode())


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise ValueError(f"control frame of {len(body)} bytes is over {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def send_start(sock: socket.socket, start: WorkerStart) -> None:
    """Send the start frame (before the socket is handed to the event loop: it blocks)."""
    sock.sendall(_frame(pickle.dumps(start)))


def read_start(sock: socket.socket) -> WorkerStart:
    """Read the start frame, and not a byte more (later frames are the event loop's).

    Raises:
        ConnectionError: the supervisor closed the link before sending it.
    """
    (size,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"control start frame of {size} bytes is over {MAX_FRAME}")
    start = pickle.loads(recv_exactly(sock, size))  # our own parent: trusted
    if not isinstance(start, WorkerStart):
        raise ConnectionError(f"control start frame holds {type(start).__name__}")
    return start


def messages(sock: socket.socket) -> Iterator[Message]:
    """The messages arriving on a blocking socket, until the peer closes it."""
    reader = _FrameReader()
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        try:
            yield from reader.feed(data)
        except ConnectionError:
            return


class _FrameReader:
    """Cuts a byte stream into messages (frames of JSON objects)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """The messages completed by ``data``; anything but a JSON object is skipped.

        Raises:
            ConnectionError: a frame announces more than ``MAX_FRAME`` bytes.
        """
        self._buffer += data
        found: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ConnectionError(f"control frame of {size} bytes is over {MAX_FRAME}")
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            try:
                message = json.loads(body)
            except ValueError:
                continue
            if isinstance(message, dict):
                found.append(message)
        return found


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket (a frame's header or body) of any link framed here.

    Raises:
        ConnectionError: the peer closed the link first.
    """
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the link mid-frame")
        data += chunk
    return bytes(data)


@dataclass(eq=False)
class ControlChannel:
    """One end of a control link, driven by the running event loop.

    Messages are tiny and rare, so they are written straight to the non-blocking socket; a
    write that does not fit (a peer that stopped reading) is dropped with the link. Incoming
    frames are read with a reader callback, not a task, so nothing needs cancelling at exit.

    Args:
        sock: the connected socket.
        on_message: called with each incoming message.
        on_closed: called once when the peer is gone (end of file or an error).
    """

    sock: socket.socket
    on_message: Callable[[Message], None]
    on_closed: Callable[[], None]
    _reader: _FrameReader = field(default_factory=_FrameReader)
    _loop: asyncio.AbstractEventLoop | None = None
    closed: bool = False

    def attach(self) -> None:
        """Start reading (on the running loop)."""
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, message: Message) -> bool:
        """Send one message; False when the link is gone (the peer exited)."""
        if self.closed:
            return False
        data = encode(message)
        try:
            sent = self.sock.send(data)
        except OSError:
            sent = -1
        if sent != len(data):
            self.close()
            return False
        return True

    def close(self) -> None:
        """Stop reading and close the socket; ``on_closed`` runs once. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.on_closed()

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            found = self._reader.feed(data)
        except ConnectionError:
            self.close()
            return
        for message in found:
            self.on_message(message)

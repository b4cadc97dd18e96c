"""Responses the drain ends at its start: event streams, and streams the app opts in.

An event stream (``text/event-stream``) written as ``while True`` never ends by itself, and its
client, an ``EventSource``, reconnects by itself the moment a response ends cleanly. Cut at
the drain deadline, the client sees an error seconds late (curl: exit 18) and the stop exits 3;
ended at the drain's start, the client reconnects at once, to a replica that is ready. So when
the drain begins, each such response gets its proper end (the last chunk: ``0\\r\\n\\r\\n`` for
chunked encoding) and the task writing it is cancelled, so the app's generator is closed and
its ``finally`` runs. That counts as a clean end, not as cut work.

A stream whose app awaits ``draining()`` has said it ends itself (it may send a last event
first): it is left to do so, and is cut at the drain deadline if it does not. Other streaming
responses keep that contract too, unless the app opts them in (``end_on_drain``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from graceful.logs import get_logger

__all__ = ["EndingStream", "EndingStreams", "StreamEnded", "is_event_stream"]

#: Longest the last chunk of one stream may take to leave: a client that stopped reading holds
#: the write behind flow control; its stream is ended without it rather than hold the drain.
FINISH_TIMEOUT = 0.5

EVENT_STREAM = "text/event-stream"
_EVENT_STREAM_BYTES = EVENT_STREAM.encode()


def is_event_stream(content_type: bytes | str) -> bool:
    """True for a ``text/event-stream`` content type (parameters and case aside)."""
    if isinstance(content_type, str):
        return content_type[:17].lower() == EVENT_STREAM
    return content_type[:17].lower() == _EVENT_STREAM_BYTES


class StreamEnded(ConnectionError):
    """The app wrote to a response the drain had already ended."""


class EndingStream:
    """One open response the drain will end.

    Attributes:
        ended: set once the drain ended it: the app's exception from the cancellation (or
            :class:`StreamEnded`, from a later write) is the expected end.
        delivered: the last chunk left in time (False: the client was not reading).
    """

    __slots__ = ("_finish", "delivered", "ended", "label", "request", "task")

    def __init__(
        self,
        task: asyncio.Task[Any],
        finish: Callable[[], Awaitable[object]],
        label: str,
        request: object,
    ) -> None:
        self.task = task
        self._finish = finish
        self.label = label
        self.request = request
        self.ended = False
        self.delivered = False

    async def end(self) -> None:
        """Send the response's proper end, then cancel the task writing its body."""
        if self.ended:
            return
        self.ended = True
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                await self._finish()
            self.delivered = True
        except Exception:  # the client left, or stopped reading: end it without the chunk
            pass
        if self.task is not asyncio.current_task():
            self.task.cancel()


class EndingStreams:
    """The open responses of one server that the drain ends at its start.

    Args:
        name: the server's label, in the log events.

    Attributes:
        abandon: drops the connection of a request whose last chunk could not leave in time
            (set by the server; by default the connection is left to the server).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.abandon: Callable[[object], None] | None = None
        self._open: set[EndingStream] = set()
        self.draining = False
        self._enders: set[asyncio.Task[None]] = set()

    def open(
        self, finish: Callable[[], Awaitable[object]], label: str, request: object
    ) -> EndingStream:
        """Register the response the current task has just started.

        Args:
            finish: sends the response's last (empty) chunk.
            label: the request, as logged (``GET /events``).
            request: the server's handle on the request, for :attr:`abandon`.

        A response started once the drain has begun is ended on the next loop iteration.
        """
        task = asyncio.current_task()
        assert task is not None, "a response is sent from a task"
        stream = EndingStream(task, finish, label, request)
        if self.draining:
            ender = asyncio.get_running_loop().create_task(
                self._end([stream]), name=f"graceful-{self.name}-end-stream"
            )
            self._enders.add(ender)
            ender.add_done_callback(self._enders.discard)
        else:
            self._open.add(stream)
        return stream

    def close(self, stream: EndingStream) -> None:
        """The response ended by itself."""
        self._open.discard(stream)

    async def end_all(self) -> None:
        """Begin the drain: end every open stream (and those started from now on)."""
        self.draining = True
        streams = list(self._open)
        self._open.clear()
        await self._end(streams)

    async def _end(self, streams: list[EndingStream]) -> None:
        if not streams:
            return
        # Together: one client that does not read must not hold the others' ends.
        await asyncio.gather(*(stream.end() for stream in streams))
        log = get_logger()
        log.info(
            "streams.ended",
            server=self.name,
            count=len(streams),
            requests=[stream.label for stream in streams],
        )
        undelivered = [stream for stream in streams if not stream.delivered]
        for stream in undelivered:
            if self.abandon is not None:
                with contextlib.suppress(Exception):
                    self.abandon(stream.request)
        if undelivered:
            log.warning(
                "streams.end_undelivered",
                server=self.name,
                requests=[stream.label for stream in undelivered],
                reason="the client was gone or not reading: ended without the last chunk",
            )

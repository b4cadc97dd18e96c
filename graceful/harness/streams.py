"""Streaming responses from the client's side: hold them open across a stop, judge how they end.

A stream (server-sent events, or any chunked response that stays open) ends well when the
server sends its last chunk and closes the response properly: for chunked transfer that is the
zero-length last chunk, for SSE also a complete last event (a blank line after it). It ends
badly when the body stops mid-way (the connection closed or reset before the last chunk) or
when it is held open until ``docker stop``'s timeout runs out and SIGKILL cuts it.
:func:`follow` records one stream; :func:`judge_streams` turns a stop's streams into findings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import httpx

from graceful.harness.container import StopResult
from graceful.harness.context import Findings
from graceful.harness.load import classify

__all__ = ["StreamOutcome", "StreamRecord", "follow", "judge_streams", "stream_client"]

# A stream cut this close to docker stop's timeout was cut by its SIGKILL.
_KILL_SLACK_S = 0.5
_TAIL_BYTES = 256
ADVICE = (
    "end each stream when the stop begins: await the stop event and send a last event "
    "(graceful: `await draining(scope).wait()` in ASGI, `draining(request)` in aiohttp)"
)


class StreamOutcome(StrEnum):
    """How a stream ended, as the client saw it."""

    OPEN = "open"  # still open (or never finished opening) when the client stopped reading
    ENDED = "ended"  # the response ended properly (last chunk received)
    CUT = "cut"  # the body stopped mid-way: the connection closed or was reset
    FAILED = "failed"  # no streaming response: refused, an error status, no answer


@dataclass(slots=True)
class StreamRecord:
    """One stream, as the client saw it (times on the monotonic clock).

    .. versionadded:: 0.1
    """

    outcome: StreamOutcome = StreamOutcome.OPEN
    status: int | None = None
    content_type: str = ""
    opened: float | None = None  # the response's head arrived
    ended: float | None = None  # the body ended (properly or not)
    received: int = 0  # body bytes
    tail: bytes = b""  # the last bytes of the body
    detail: str = ""  # the error, for CUT and FAILED

    @property
    def sse(self) -> bool:
        """The response is server-sent events."""
        return self.content_type.split(";", 1)[0].strip().lower() == "text/event-stream"

    @property
    def mid_event(self) -> bool:
        """An SSE body that ended without the blank line that completes its last event (a
        client drops such an event)."""
        tail = self.tail.replace(b"\r\n", b"\n")
        return self.sse and bool(tail) and not tail.endswith(b"\n\n")

    def last_words(self) -> str:
        """The stream's last line (the data of its last event, for SSE), for a finding."""
        lines = [ln for ln in self.tail.decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:60] if lines else ""


def stream_client(port: int) -> httpx.AsyncClient:
    """A client for streams to 127.0.0.1:``port``: no read timeout (a stream may be quiet),
    a connection per stream."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=httpx.Timeout(10.0, read=None),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        trust_env=False,
    )


async def follow(
    client: httpx.AsyncClient,
    path: str,
    record: StreamRecord,
    *,
    opened: asyncio.Event | None = None,
    first_bytes: asyncio.Event | None = None,
) -> None:
    """``GET path`` and read the response until it ends, filling ``record``.

    Args:
        client: see :func:`stream_client`.
        path: the stream's request target.
        record: where what happened goes (also when the task is cancelled: then it stays
            ``OPEN``).
        opened: set once the response's head arrived (or the request failed).
        first_bytes: set once the first body bytes arrived (or the stream ended).
    """
    headers = {"Accept": "text/event-stream, */*", "Cache-Control": "no-cache"}
    try:
        async with client.stream("GET", path, headers=headers) as response:
            record.status = response.status_code
            record.content_type = response.headers.get("content-type", "")
            record.opened = time.monotonic()
            if opened is not None:
                opened.set()
            if not response.is_success:
                record.outcome, record.detail = StreamOutcome.FAILED, f"HTTP {record.status}"
                return
            async for chunk in response.aiter_raw():
                record.received += len(chunk)
                record.tail = (record.tail + chunk)[-_TAIL_BYTES:]
                if first_bytes is not None:
                    first_bytes.set()
        record.outcome = StreamOutcome.ENDED
    except httpx.HTTPError as exc:
        outcome, detail = classify(exc)
        record.detail = detail or outcome.value
        record.outcome = StreamOutcome.CUT if record.opened is not None else StreamOutcome.FAILED
    finally:
        if record.outcome is not StreamOutcome.OPEN:
            record.ended = time.monotonic()
        for event in (opened, first_bytes):
            if event is not None:
                event.set()


def judge_streams(
    f: Findings,
    records: Sequence[StreamRecord],
    *,
    stop: StopResult,
    stop_began: float,
    timeout: int,
) -> None:
    """Every stream open at the stop must end properly before the container exits.

    Args:
        f: where findings go.
        records: the streams, as :func:`follow` left them.
        stop: how the container ended.
        stop_began: when ``docker stop`` was sent (monotonic).
        timeout: ``docker stop -t``.
    """
    spanning = [
        r
        for r in records
        if r.opened is not None
        and r.outcome is not StreamOutcome.FAILED
        and (r.ended is None or r.ended >= stop_began)
    ]
    n = len(records)
    if not spanning:
        early = [r for r in records if r.outcome is StreamOutcome.ENDED]
        why = f"{len(early)} ended by themselves first" if early else _failures(records)
        f.inconclusive(f"no stream was open when the stop began ({n} opened; {why})")
        return
    killed = stop.exit_code == 137 and stop.seconds >= timeout - _KILL_SLACK_S
    held = [r for r in spanning if r.outcome is not StreamOutcome.ENDED and killed]
    cut = [r for r in spanning if r.outcome is not StreamOutcome.ENDED and not killed]
    ended = [r for r in spanning if r.outcome is StreamOutcome.ENDED]
    if held:
        f.problem(
            f"{len(held)} of {len(spanning)} streams were held open until docker stop's "
            f"{timeout} s timeout ran out and SIGKILL cut them (exit 137): a stream that never "
            f"ends holds the drain; {ADVICE}"
        )
    if cut:
        at = [r.ended - stop_began for r in cut if r.ended is not None]
        when = f" {_span(at)} s after the stop began" if at else ""
        f.problem(
            f"{len(cut)} of {len(spanning)} streams were cut mid-body{when} ({cut[0].detail}), "
            f"exit {stop.exit_code}: the server dropped them instead of ending them; {ADVICE}"
        )
    broken = [r for r in ended if r.mid_event]
    if broken:
        f.problem(
            f"{len(broken)} of {len(spanning)} event streams ended mid-event (no blank line "
            "after the last event, so clients drop it): finish the last event before closing"
        )
    if ended and not (held or cut or broken):
        at = [r.ended - stop_began for r in ended if r.ended is not None]
        kind = "event streams" if all(r.sse for r in ended) else "streams"
        f.note(
            f"all {len(ended)} {kind} open at the stop ended cleanly "
            f"{_span(at)} s after it began (last words: "
            f"{ended[0].last_words()!r})"
        )
    if len(spanning) < n:
        f.note(f"{n - len(spanning)} of {n} streams were not open at the stop")


def _span(values: Sequence[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}-{high}"


def _failures(records: Sequence[StreamRecord]) -> str:
    details = sorted({r.detail or r.outcome.value for r in records})
    return "; ".join(details) or "none opened"

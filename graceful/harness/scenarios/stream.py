"""The ``stop-during-stream`` scenario: streaming responses held open across ``docker stop``.

The stop bug FastAPI services hit most: a stream (server-sent events, a chunked download)
that never ends holds the server's drain until SIGKILL, or is cut mid-body when the server
gives up on it. A stream that awaits the stop and sends its last event ends cleanly, in time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import ClassVar

from graceful.harness.context import HANG_GUARD_S, Context, Findings, gather_bounded
from graceful.harness.contract import Capability
from graceful.harness.judges import judge_exit, judge_report_events, judge_traceback
from graceful.harness.report import ScenarioResult
from graceful.harness.streams import StreamRecord, follow, judge_streams, stream_client

__all__ = ["StopDuringStream"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StopDuringStream:
    """``docker stop`` with streaming responses open: every stream ends cleanly (its last
    chunk, or the SSE stream closing after its last event) before the deadline, and the
    container exits 0.

    Fails when a stream is held open until SIGKILL (exit 137) or cut mid-body, and says which.

    Args:
        streams: streams open when the stop begins.
        first_bytes_wait: the longest to wait for each stream's first bytes before the stop
            (a stream may stay quiet; the stop then begins anyway).

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-during-stream"
    summary: ClassVar[str] = (
        "docker stop with streaming responses (SSE, chunked) open: each ends cleanly with its "
        "last event before the deadline, exit 0 (not held until SIGKILL, not cut mid-body)"
    )
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.STREAM})
    streams: int = 3
    first_bytes_wait: float = 2.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        w = ctx.workload
        service = await ctx.start()
        records = [StreamRecord() for _ in range(self.streams)]
        async with stream_client(service.main_port) as client:
            opened = [asyncio.Event() for _ in records]
            flowing = [asyncio.Event() for _ in records]
            tasks = [
                asyncio.create_task(follow(client, w.stream_path, r, opened=o, first_bytes=b))
                for r, o, b in zip(records, opened, flowing, strict=True)
            ]
            ctx.step(f"{self.streams} streams of {w.stream_path} open")
            await gather_bounded([asyncio.create_task(e.wait()) for e in opened])
            await gather_bounded(
                [asyncio.create_task(e.wait()) for e in flowing], timeout=self.first_bytes_wait
            )
            stop_began = time.monotonic()
            stop = await ctx.stop(service)
            # The streams end with the container, at the latest: the bound is a hang guard.
            await gather_bounded(tasks, timeout=HANG_GUARD_S)
        judge_streams(f, records, stop=stop, stop_began=stop_began, timeout=ctx.stop_timeout)
        judge_exit(f, ctx, service, stop)
        logs = await ctx.logs(service)
        judge_report_events(f, logs, w, strict=True)
        judge_traceback(f, logs)
        return f.result(self.name, stop=stop)

"""graceful.harness.streams: streams followed for real on loopback, and judged.

Each server ends its stream one way when told to (the stop): cleanly, cut mid-body, or
mid-event; the client's record and the judgement must tell which.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from graceful.harness.container import StopResult
from graceful.harness.context import Findings
from graceful.harness.report import Verdict
from graceful.harness.streams import (
    StreamOutcome,
    StreamRecord,
    follow,
    judge_streams,
    stream_client,
)
from tests.harness_servers import serve, stream_server


async def follow_until_stopped(ending: str) -> tuple[StreamRecord, float]:
    """Open one stream, wait for its first bytes, end it the given way; the record and when
    the "stop" began."""
    async with stream_server(ending) as (port, stop), stream_client(port) as client:
        record = StreamRecord()
        flowing = asyncio.Event()
        task = asyncio.create_task(follow(client, "/events", record, first_bytes=flowing))
        await asyncio.wait_for(flowing.wait(), 10)
        assert record.outcome is StreamOutcome.OPEN
        stop_began = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
    return record, stop_began


async def test_a_stream_that_ends_with_its_last_event_passes() -> None:
    record, stop_began = await follow_until_stopped("clean")
    assert record.outcome is StreamOutcome.ENDED
    assert record.sse
    assert not record.mid_event
    assert record.last_words() == "data: bye"
    f = Findings()
    judge_streams(f, [record], stop=StopResult(0, 0.1), stop_began=stop_began, timeout=3)
    assert f.verdict is Verdict.PASS
    assert "all 1 event streams open at the stop ended cleanly" in f.notes[0]


async def test_a_stream_cut_mid_body_fails_and_says_so() -> None:
    record, stop_began = await follow_until_stopped("cut")
    assert record.outcome is StreamOutcome.CUT
    assert "incomplete chunked read" in record.detail
    f = Findings()
    judge_streams(f, [record], stop=StopResult(3, 2.2), stop_began=stop_began, timeout=3)
    assert f.verdict is Verdict.FAIL
    assert "1 of 1 streams were cut mid-body" in f.problems[0]
    assert "exit 3" in f.problems[0]
    assert "draining(scope)" in f.problems[0]
    # The same cut at docker stop's timeout, with exit 137: SIGKILL cut a stream held open.
    f = Findings()
    judge_streams(f, [record], stop=StopResult(137, 3.1), stop_began=stop_began, timeout=3)
    assert "held open until docker stop's 3 s timeout ran out" in f.problems[0]


async def test_an_event_stream_that_ends_mid_event_fails() -> None:
    record, stop_began = await follow_until_stopped("mid-event")
    assert record.outcome is StreamOutcome.ENDED  # the response itself ended properly
    assert record.mid_event
    f = Findings()
    judge_streams(f, [record], stop=StopResult(0, 0.1), stop_began=stop_began, timeout=3)
    assert f.verdict is Verdict.FAIL
    assert "ended mid-event" in f.problems[0]


def test_streams_that_ended_before_the_stop_prove_nothing() -> None:
    early = StreamRecord(outcome=StreamOutcome.ENDED, opened=1.0, ended=1.5)
    f = Findings()
    judge_streams(f, [early, early], stop=StopResult(0, 0.1), stop_began=2.0, timeout=3)
    assert f.verdict is Verdict.INCONCLUSIVE
    assert "2 ended by themselves first" in f.reasons[0]


@pytest.mark.parametrize("status", [404, 500])
async def test_an_error_status_is_no_stream(status: int) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server, stream_client(port) as client:
        record = StreamRecord()
        await asyncio.wait_for(follow(client, "/events", record), 10)
    assert record.outcome is StreamOutcome.FAILED
    assert record.detail == f"HTTP {status}"

"""graceful.harness.load: the ledger, the error classes and the load client.

Error classes are produced by real sockets on loopback (refused, reset, closed, silent), not by
hand.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from graceful.harness.load import (
    Kind,
    Ledger,
    LoadClient,
    Record,
    RequestOutcome,
    Workload,
    describe_failures,
)
from graceful.harness.work_done import answered_too_soon
from tests.harness_servers import Handler, serve
from tests.harness_servers import contract_server as start_contract_server
from tests.support import free_port


@pytest.fixture
async def contract_server() -> AsyncIterator[int]:
    async with start_contract_server() as port:
        yield port


def rec(kind: Kind, sent: float, outcome: RequestOutcome, **kw: object) -> Record:
    return Record(kind=kind, sent=sent, answered=sent + 0.1, outcome=outcome, **kw)  # type: ignore[arg-type]


# --- ledger ------------------------------------------------------------------------------------


def test_ledger_counts_acks_and_windows() -> None:
    ledger = Ledger()
    ledger.add(rec(Kind.WORK, 1.0, RequestOutcome.OK, status=200))
    ledger.add(rec(Kind.WRITE, 1.5, RequestOutcome.OK, status=200, item_id="a"))
    ledger.add(rec(Kind.WRITE, 2.5, RequestOutcome.RESET, item_id="b"))
    ledger.add(rec(Kind.LONG, 0.5, RequestOutcome.CLOSED))
    ledger.add(rec(Kind.READ, 3.0, RequestOutcome.OK, status=200))

    counts = ledger.counts()
    assert (counts.sent, counts.ok, counts.failed) == (4, 2, 2)  # the read is not load
    assert ledger.acked_ids() == ["a"]
    assert [r.item_id for r in ledger.select([Kind.WRITE], sent_before=2.0)] == ["a"]
    assert [r.kind for r in ledger.select(sent_after=2.0)] == [Kind.WRITE, Kind.READ]


def test_describe_failures_groups_by_class() -> None:
    records = [
        rec(Kind.WORK, 0, RequestOutcome.RESET),
        rec(Kind.WORK, 0, RequestOutcome.RESET),
        rec(Kind.WORK, 0, RequestOutcome.HTTP_ERROR, status=503),
        rec(Kind.WORK, 0, RequestOutcome.CLOSED),
    ]
    assert describe_failures(records) == "2 reset, 1 HTTP 503, 1 closed"


async def test_client_records_ok_and_acks(contract_server: int) -> None:
    async with LoadClient(contract_server, workload=Workload(), id_prefix="t") as client:
        work = await client.work(5)
        ack = await client.write("x1")
        lie = await client.write("liar")
    assert work.outcome is RequestOutcome.OK
    assert work.status == 200
    assert ack.acked
    assert ack.item_id == "x1"
    # Answered 200 but with another id: not an acknowledgement of this write.
    assert not lie.acked
    assert lie.outcome is RequestOutcome.HTTP_ERROR
    assert client.ledger.acked_ids() == ["x1"]


async def test_refused_connection_is_classified_refused() -> None:
    port = free_port()  # bound then closed: nobody listens, the kernel refuses
    async with LoadClient(port, workload=Workload()) as client:
        record = await client.work(0)
    assert record.outcome is RequestOutcome.REFUSED


async def test_reset_and_closed_are_told_apart() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        raw = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends RST instead of FIN.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    for handler, expected in ((reset, RequestOutcome.RESET), (close, RequestOutcome.CLOSED)):
        server, port = await serve(handler)
        async with server, LoadClient(port, workload=Workload()) as client:
            record = await client.work(0)
        assert record.outcome is expected, record


async def test_silent_server_is_a_timeout() -> None:
    finished = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers; returns when the client hangs up
        finally:
            writer.close()
            finished.set()

    server, port = await serve(silent)
    async with server:
        async with LoadClient(port, workload=Workload(), timeout=0.2) as client:
            record = await client.work(0)
        await asyncio.wait_for(finished.wait(), 30)
    assert record.outcome is RequestOutcome.TIMEOUT


async def test_steady_load_is_bounded_and_stops_when_the_service_is_gone(
    contract_server: int,
) -> None:
    stop = asyncio.Event()
    async with LoadClient(contract_server, workload=Workload()) as client:
        await client.steady(stop=stop, concurrency=3, ms=0, max_requests=20, max_seconds=30)
    assert len(client.ledger.records) == 20

    port = free_port()
    async with LoadClient(port, workload=Workload()) as client:
        await client.steady(stop=stop, concurrency=2, max_requests=1000, max_seconds=30)
    # One refused request per worker, then each worker gives up instead of spinning.
    assert len(client.ledger.records) == 2


async def test_steady_load_can_keep_going_after_failures() -> None:
    """The load balancer's client (rolling-restart): a failed request is counted, and the
    worker backs off and goes on instead of giving up, until its request budget is spent.
    Control: the default worker gives up after its first refusal (the test above)."""
    stop = asyncio.Event()
    async with LoadClient(free_port(), workload=Workload()) as client:
        await client.steady(
            stop=stop, concurrency=2, max_requests=10, max_seconds=30, retry_after=0.001
        )
    assert len(client.ledger.records) == 10
    assert {r.outcome for r in client.ledger.records} == {RequestOutcome.REFUSED}


async def test_settle_sends_one_short_request(contract_server: int) -> None:
    async with LoadClient(contract_server, workload=Workload()) as client:
        await client.settle()
    (record,) = client.ledger.records
    assert record.kind is Kind.WORK
    assert record.ok


def work_server(honest: bool) -> Handler:
    """``GET /work?ms=N``: sleeps N ms first when ``honest``, else answers 200 at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        if honest:
            await asyncio.sleep(int(parse_qs(urlsplit(target).query)["ms"][0]) / 1000)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize(("honest", "asked"), [(False, 5000), (True, 50)])
async def test_a_work_request_records_what_it_asked_for(honest: bool, asked: int) -> None:
    """Issue B4: the ledger keeps what each work request asked for, so an answer that came
    without the work (a server that says 200 at once) is seen; the honest server, which
    sleeps what it is asked, is the control."""
    server, port = await serve(work_server(honest))
    async with server, LoadClient(port, workload=Workload()) as client:
        record = await client.work(asked, kind=Kind.LONG)
    assert record.ok
    assert record.asked_ms == asked
    assert answered_too_soon(client.ledger) == ([] if honest else [record])

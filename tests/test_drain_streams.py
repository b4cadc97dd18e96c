"""Draining an asyncio streams server: the line-protocol example in a child process.

Same approach as ``test_drain_http.py`` (whose child-process helpers this reuses): real
sockets, a real SIGTERM, assertions on what clients saw, the exit code and the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_drain_http import HANG_GUARD, Child, service, wait_inflight

pytestmark = pytest.mark.slow


class LineClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\n" for line in lines).encode())
        await self.writer.drain()

    async def ask(self, line: str) -> bytes:
        await self.send(line)
        return await self.reader.readline()


async def connect(child: Child, clients: list[LineClient]) -> LineClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", child.port)
    client = LineClient(reader, writer)
    clients.append(client)
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[LineClient]]:
    opened: list[LineClient] = []
    yield opened
    for client in opened:
        client.writer.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"], ids=["child-asyncio", "child-uvloop"])
async def test_idle_connections_close_at_once_busy_ones_after_their_unit(
    loop: str, tmp_path: Path, clients: list[LineClient]
) -> None:
    """10 idle connections and one busy with a 1 s command (another one queued behind it).

    Result: the busy connection gets its answer, then EOF (the queued command is not
    started); idle connections read EOF once that work is done (kept until then, so that a
    line crossing the stop is answered: see test_drain_http's keep-alive race); exit 0.
    """
    async with service("streams_service", tmp_path, loop=loop, name="lines") as child:
        idle = [await connect(child, clients) for _ in range(10)]
        for client in idle:
            assert await client.ask("COUNT") == b"OK 0\n"
        busy = await connect(child, clients)
        await busy.send("WORK 1000", "WORK 1000")
        await wait_inflight(child, 1)
        order: list[str] = []

        async def watch_idle(client: LineClient) -> None:
            assert await client.reader.read() == b""
            order.append("idle-closed")

        async def watch_busy() -> bytes:
            answer = await busy.reader.readline()
            order.append("busy-answered")
            return answer + await busy.reader.read()

        watchers = [asyncio.create_task(watch_idle(c)) for c in idle]
        answer = asyncio.create_task(watch_busy())
        child.terminate()
        await asyncio.gather(*watchers)
        assert await answer == b"OK 1000\n"
        assert order == ["busy-answered"] + ["idle-closed"] * 10
        assert await child.exit_code() == 0
    report = child.report()
    assert report["drained"] is True
    assert report["inflight_at_signal"] == 1


async def test_connections_after_stop_are_refused(
    tmp_path: Path, clients: list[LineClient]
) -> None:
    """A busy connection keeps the drain going while another client tries to connect.

    Result: the attempt is refused by the kernel before the busy unit ends; exit 0.
    """
    async with service("streams_service", tmp_path, name="lines") as child:
        busy = await connect(child, clients)
        answer = asyncio.create_task(busy.ask("WORK 2000"))
        await wait_inflight(child, 1)
        child.terminate()
        async with asyncio.timeout(HANG_GUARD):
            while True:
                try:
                    late = await connect(child, clients)
                except ConnectionRefusedError:
                    break
                # Accepted before the listener closed: it must be closed cleanly, unserved.
                assert await late.reader.read() == b""
        assert not answer.done()
        assert await answer == b"OK 2000\n"
        assert await child.exit_code() == 0


async def test_unit_longer_than_the_budget_is_cut_and_flush_still_runs(
    tmp_path: Path, clients: list[LineClient]
) -> None:
    """A 60 s command is running when SIGTERM arrives with a 2 s budget.

    Result: the connection is cut without an answer, the flush hook runs, exit code 3.
    """
    marker = tmp_path / "flushed"
    async with service(
        "streams_service",
        tmp_path,
        stop_timeout=2.0,
        env={"FLUSH_MARKER": str(marker)},
        name="lines",
    ) as child:
        busy = await connect(child, clients)
        await busy.send("WORK 60000")
        await wait_inflight(child, 1)
        child.terminate()
        assert await child.exit_code() == 3
        try:
            assert await busy.reader.read() == b""
        except ConnectionResetError:
            pass  # cut: an abort resets the connection
    assert marker.read_text() == "flush"
    report = child.report()
    assert report["cancelled"] == 1
    assert report["seconds"] < child.stop_timeout


async def test_hostile_lines_get_err_and_the_connection_stays_usable(
    tmp_path: Path, clients: list[LineClient]
) -> None:
    """Bytes that are not UTF-8, a 100 KiB line, a NUL in an id, odd digits, then a line with
    no end before EOF.

    Result: an ``ERR`` answer for each, in order, on the same connection, which still serves
    ``COUNT`` after them (nothing was stored); the service logs no traceback and stops with
    exit 0.
    """
    async with service("streams_service", tmp_path, name="lines") as child:
        client = await connect(child, clients)
        client.writer.write(b"PUT \xff\xfe\n" + b"PUT " + b"x" * (100 * 1024) + b"\n")
        await client.send("PUT a\x00b", "WORK \u00b2", "WORK " + "9" * 5000, "COUNT")
        answers = [await client.reader.readline() for _ in range(6)]
        assert answers[0] == b"ERR the line is not UTF-8\n"
        assert answers[1] == b"ERR line longer than 65536 bytes, skipped\n"
        assert answers[2] == b'ERR "id" must not hold control characters or lone surrogates\n'
        assert answers[3].startswith(b"ERR ms must be a whole number")
        assert answers[4].startswith(b"ERR ms must be a whole number")
        assert answers[5] == b"OK 0\n"
        # A long line that the client ends by closing: still one ERR, then a clean EOF.
        client.writer.write(b"x" * (200 * 1024))
        client.writer.write_eof()
        assert await client.reader.read() == b"ERR line longer than 65536 bytes, skipped\n"
        child.terminate()
        assert await child.exit_code() == 0
    assert "Traceback" not in child.process.output()

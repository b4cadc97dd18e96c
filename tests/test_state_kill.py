"""Acknowledged writes survive SIGKILL; buffered writes are flushed on SIGTERM.

Real processes, real signals, real files: ``tests/apps/state_writer.py`` serves writes over a
line protocol on 127.0.0.1 and acknowledges a PUT only after ``DurableStore.put`` returned.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import APPS, ServiceProcess

WRITER = APPS / "state_writer.py"
HANG_GUARD = 60.0

pytestmark = pytest.mark.slow


@contextmanager
def running_writer(path: Path, **env: str) -> Iterator[tuple[ServiceProcess, int]]:
    """The writer on ``path``; killed (if still running) and its pipe closed on exit."""
    proc = ServiceProcess.python(
        WRITER, env={"STATE_PATH": str(path), "GRACEFUL_STOP_TIMEOUT": "5", **env}
    )
    try:
        yield proc, int(proc.wait_event("writer.listening")["port"])
    finally:
        proc.kill()  # also reaps it and closes its pipe


async def request(port: int, line: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def stored_keys(port: int) -> list[str]:
    reply = await request(port, "KEYS")
    assert reply.startswith("KEYS "), reply
    keys: list[str] = json.loads(reply[len("KEYS ") :])
    return keys


async def writer_client(
    port: int, ids: Iterator[str], on_ack: Callable[[str], None], errors: list[str]
) -> None:
    """Send PUTs one after another until the connection dies; report each acknowledgement."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionError:
        return
    try:
        for key in ids:
            writer.write(f"PUT {key}\n".encode())
            await writer.drain()
            line = await reader.readline()
            if not line:
                return  # the server is gone; this PUT was never acknowledged
            verb, acked, *_ = line.decode().split()
            if verb != "OK" or acked != key:
                errors.append(line.decode())
                return
            on_ack(key)
    except ConnectionError:
        return
    finally:
        writer.close()


def integrity(path: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_sigkill_loses_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    """Every acknowledged write is on disk after SIGKILL at a random moment.

    1. The writer serves 64 concurrent clients; the test keeps a ledger of acknowledged ids.
    2. When the ledger reaches a random size (by seed), the test SIGKILLs the writer, then
       collects the acknowledgements that were already on their way.
    3. The writer is restarted on the same file.
    Result: every acknowledged id is stored, a repeated PUT of one is a duplicate, and after a
    clean stop ``PRAGMA integrity_check`` answers ok.
    """
    rng = random.Random(seed)
    path = tmp_path / "state.db"
    kill_after = rng.randrange(50, 3000)
    acked: set[str] = set()
    errors: list[str] = []
    killed = asyncio.Event()

    def on_ack(key: str) -> None:
        acked.add(key)
        if len(acked) >= kill_after and not killed.is_set():
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)

    counter = itertools.count()
    ids = (f"s{seed}-{n}" for n in counter)
    with running_writer(path) as (proc, port):
        async with asyncio.timeout(HANG_GUARD):
            await asyncio.gather(*(writer_client(port, ids, on_ack, errors) for _ in range(64)))
        assert killed.is_set(), "the clients stopped before the kill"
        assert proc.wait() == -signal.SIGKILL
    assert errors == []
    assert len(acked) >= kill_after

    with running_writer(path) as (proc, port):
        async with asyncio.timeout(HANG_GUARD):
            keys = set(await stored_keys(port))
            lost = acked - keys
            assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
            # Written but not acknowledged (in flight at the kill) is allowed, nothing else.
            assert keys <= {f"s{seed}-{n}" for n in range(next(counter))}
            some = sorted(acked)[0]
            assert await request(port, f"PUT {some}") == f"OK {some} dup"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    assert integrity(path) == [("ok",)]


async def test_sigterm_flushes_the_buffered_batch(tmp_path: Path) -> None:
    """A batch still in memory at SIGTERM is written before the process exits.

    1. 37 items are buffered; the batcher's size (1000) and age (60 s) triggers cannot fire.
    2. SIGTERM.
    Result: exit code 0; the flush phase logged 37 items flushed and the shutdown report says
    so; all 37 are in the file.
    """
    path = tmp_path / "state.db"
    with running_writer(path, BATCH_MAX_ITEMS="1000", BATCH_MAX_AGE="60") as (proc, port):
        async with asyncio.timeout(HANG_GUARD):
            for i in range(37):
                assert await request(port, f"BUF b{i}") == f"BUF b{i}"
            assert await stored_keys(port) == []  # buffered, not yet written
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    events = proc.events()
    flushed = [e for e in events if e.get("event") == "state.flushed"]
    assert [(e["reason"], e["count"]) for e in flushed] == [("shutdown", 37)]
    assert flushed[0]["phase"] == "flush"
    report = next(e for e in events if e.get("event") == "shutdown.report")
    assert report["flushed"] == 37
    assert report["exit_code"] == 0
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT key FROM graceful_items ORDER BY rowid").fetchall()
    conn.close()
    assert [key for (key,) in rows] == [f"b{i}" for i in range(37)]
    assert integrity(path) == [("ok",)]


async def test_sigkill_loses_only_unflushed_buffered_items(tmp_path: Path) -> None:
    """The contrast: a batch in memory is not durable; SIGKILL loses it, nothing else.

    1. 10 items are written with PUT (acknowledged durable), 5 are buffered.
    2. SIGKILL.
    Result: the 10 acknowledged items are there, the 5 buffered ones are not; the file is ok.
    """
    path = tmp_path / "state.db"
    with running_writer(path, BATCH_MAX_ITEMS="1000", BATCH_MAX_AGE="60") as (proc, port):
        async with asyncio.timeout(HANG_GUARD):
            for i in range(10):
                assert await request(port, f"PUT p{i}") == f"OK p{i} new"
            for i in range(5):
                assert await request(port, f"BUF b{i}") == f"BUF b{i}"
        proc.signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    assert integrity(path) == [("ok",)]
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT key FROM graceful_items ORDER BY rowid").fetchall()
    conn.close()
    assert [key for (key,) in rows] == [f"p{i}" for i in range(10)]

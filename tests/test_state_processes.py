"""Several processes open one store at the same moment and write to it, as the workers of
``graceful serve --workers N`` do (each opens the store in its app's lifespan).

Real processes, real files: each opener is a process started once; told a path on its stdin,
it opens the store there, writes, closes and answers one line. The test tells all of them at
once, round after round, each round on a new file (the case that broke: SQLite refuses a
concurrent switch of a new file to WAL with SQLITE_BUSY, at once, without waiting).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graceful.state import DurableStore

PROCESSES = 4
WRITES = 20
ROUNDS = 60

# Through graceful's store: open, write WRITES keys at once (group commit), close.
STORE_OPENER = f"""
import asyncio, sys
import structlog
from graceful.state import DurableStore

structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # answers only on stdout

async def one_round(path):
    async with DurableStore(path, registry=None) as store:
        keys = [f"{{sys.argv[1]}}-{{i}}" for i in range({WRITES})]
        await asyncio.gather(*(store.put(key, {{}}) for key in keys))

for line in sys.stdin:
    try:
        asyncio.run(one_round(line.strip()))
    except Exception as exc:
        print("error", exc, flush=True)
    else:
        print("ok", flush=True)
"""

# The control: the same first statements on plain connections, nothing serializing them.
RAW_OPENER = """
import sqlite3, sys

for line in sys.stdin:
    try:
        conn = sqlite3.connect(line.strip(), isolation_level=None, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
        conn.execute("COMMIT")
        conn.close()
    except sqlite3.Error as exc:
        print("error", exc, flush=True)
    else:
        print("ok", flush=True)
"""


@contextmanager
def openers(program: str) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", program, f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def one_round(procs: list[subprocess.Popen[str]], path: Path) -> list[str]:
    """Tell every opener ``path`` at once; their answers."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{path}\n")
    for proc in procs:  # written first, flushed together: as close to "at once" as pipes get
        assert proc.stdin is not None
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        answers.append(proc.stdout.readline().strip())
    return answers


def count(path: Path) -> int:
    async def read() -> int:
        async with DurableStore(path, registry=None) as store:
            return await store.count()

    return asyncio.run(read())


def test_workers_open_one_new_store_at_once_and_every_write_is_there(tmp_path: Path) -> None:
    """1. Four processes open a new store at the same moment, each writes 20 keys, closes.
    2. Result: every open succeeds, in every round; the file holds all 80 keys.
    Repeated on 60 fresh files (before the opening was serialized, a round failed within
    the first dozen or so), then once more on an existing file."""
    with openers(STORE_OPENER) as procs:
        for n in range(ROUNDS):
            path = tmp_path / f"new-{n}.sqlite"
            assert one_round(procs, path) == ["ok"] * PROCESSES, f"round {n}"
            assert count(path) == PROCESSES * WRITES
        assert one_round(procs, path) == ["ok"] * PROCESSES  # an existing store
        assert count(path) == PROCESSES * WRITES


def test_control_unserialized_opens_of_a_new_file_fail_at_once() -> None:
    """The control: the same opens on plain SQLite connections (a 5 s busy timeout each),
    nothing serializing them. Some round fails with "database is locked", and at once: the
    switch to WAL does not wait for the busy timeout."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, openers(RAW_OPENER) as procs:
        failures: list[str] = []
        for n in range(200):
            answers = one_round(procs, Path(tmp) / f"new-{n}.sqlite")
            failures += [a for a in answers if a != "ok"]
            if failures:
                break
    assert failures, "200 rounds of 4 concurrent opens of a new file never collided"
    assert all("database is locked" in failure for failure in failures), failures

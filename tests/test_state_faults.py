"""Faults of the state file: the service refuses to start with a clear error, or fails the
writes it cannot make, and never damages what is already on disk.

Each case runs ``tests/apps/state_writer.py`` as a real process. The tests run as root, whom
``chmod`` does not stop, so read-only and full file systems are real ones: a small tmpfs
mounted in a private mount namespace (``unshare --mount``) that only the service sees; the
test reaches its files through ``/proc/<pid>/root``. A non-root service is covered too, with
the service dropping to an unprivileged user once its code is loaded.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import APPS, ServiceProcess

WRITER = APPS / "state_writer.py"
HANG_GUARD = 60.0


def service(argv_prefix: Sequence[str], state_path: Path) -> ServiceProcess:
    return ServiceProcess(
        [*argv_prefix, sys.executable, "-u", str(WRITER)],
        env={"STATE_PATH": str(state_path), "GRACEFUL_STOP_TIMEOUT": "5"},
    )


def finished(proc: ServiceProcess) -> int:
    """Wait for a service that should exit by itself; close its pipe."""
    try:
        return proc.wait(HANG_GUARD)
    finally:
        proc.kill()  # also reaps it and closes its pipe


def assert_refused(proc: ServiceProcess, path: Path, reason: str) -> None:
    code = finished(proc)
    out = proc.output()
    assert code != 0, out
    assert f"state store {path}" in out, out
    assert reason in out, out
    assert "writer.listening" not in out


async def request(port: int, line: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


def copied(path: Path, to: Path) -> Path:
    """Copy a database (and its -wal, if any) out of the namespace before SQLite opens it.

    SQLite resolves symbolic links in a path, and ``/proc/<pid>/root`` is one: opened in
    place, the path would lead to the test's own (empty) directory, not the tmpfs.
    """
    target = to / "copy.db"
    shutil.copyfile(path, target)
    if os.path.exists(f"{path}-wal"):
        shutil.copyfile(f"{path}-wal", f"{target}-wal")
    return target


def sqlite_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("state.db"))


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``mountpoint`` in a private mount namespace.

    A holder process keeps the namespace alive; services run in it through ``nsenter``.
    """

    def __init__(self, mountpoint: Path, size: str) -> None:
        self.mountpoint = mountpoint
        script = (
            f"mount -t tmpfs -o size={size} tmpfs {mountpoint} && echo ready && exec sleep 3600"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.holder.stdout is not None
        first = self.holder.stdout.readline().strip()
        if first != "ready":
            self.close()
            reason = f"cannot mount a tmpfs in a private mount namespace: {first}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)  # CI runs as root with this capability: never hide it
            pytest.skip(reason)

    @property
    def enter(self) -> list[str]:
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--"]

    def outside(self, path: Path) -> Path:
        """``path`` inside the namespace, as seen from the test."""
        return Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")

    def remount_read_only(self) -> None:
        subprocess.run([*self.enter, "mount", "-o", "remount,ro", str(self.mountpoint)], check=True)

    def fill(self) -> Path:
        """Fill the file system to the last byte; return the filler file (inside)."""
        filler = self.mountpoint / "filler"
        fd = os.open(self.outside(filler), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (65536, 4096, 1):
                while True:
                    try:
                        os.write(fd, bytes(chunk))
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return filler

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)
        if self.holder.stdout is not None:
            self.holder.stdout.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    disk = SmallDisk(mountpoint, "1m")
    try:
        yield disk
    finally:
        disk.close()


@contextmanager
def serving(prefix: Sequence[str], state_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    proc = service(prefix, state_path)
    try:
        yield proc, int(proc.wait_event("writer.listening")["port"])
    finally:
        proc.kill()  # also reaps it and closes its pipe


async def write_some(prefix: Sequence[str], state_path: Path, keys: Sequence[str]) -> None:
    """Run the service, store ``keys``, stop it cleanly."""
    with serving(prefix, state_path) as (proc, port):
        async with asyncio.timeout(HANG_GUARD):
            for key in keys:
                assert await request(port, f"PUT {key}") == f"OK {key} new"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()


# -- refused at startup ------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "state.db"
    assert_refused(service([], path), path, f"directory {path.parent} does not exist")
    assert not path.parent.exists()


def test_not_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"these are somebody's notes, not a database\n" * 100)
    before = path.read_bytes()
    assert_refused(service([], path), path, "not a SQLite database")
    assert path.read_bytes() == before
    assert sqlite_files(tmp_path) == ["state.db"]  # no -wal or -shm left beside it


async def test_corrupt_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await write_some([], path, [f"key-{i:04d}-{'x' * 40}" for i in range(300)])
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page : 2 * page + 64] = b"\xa5" * 64  # the header of a b-tree page
    path.write_bytes(data)
    before = path.read_bytes()
    assert_refused(service([], path), path, "corrupt")
    assert path.read_bytes() == before
    assert sqlite_files(tmp_path) == ["state.db"]


async def test_read_only_file_system_with_data(small_disk: SmallDisk, tmp_path: Path) -> None:
    path = small_disk.mountpoint / "state.db"
    await write_some(small_disk.enter, path, ["a", "b", "c"])
    before = small_disk.outside(path).read_bytes()
    small_disk.remount_read_only()
    assert_refused(service(small_disk.enter, path), path, "read-only")
    assert small_disk.outside(path).read_bytes() == before
    conn = sqlite3.connect(copied(small_disk.outside(path), tmp_path))
    assert conn.execute("SELECT key FROM graceful_items").fetchall() == [("a",), ("b",), ("c",)]
    conn.close()


def test_read_only_file_system_new_file(small_disk: SmallDisk) -> None:
    path = small_disk.mountpoint / "state.db"
    small_disk.remount_read_only()
    assert_refused(service(small_disk.enter, path), path, "is not writable")


def test_full_disk_at_startup(small_disk: SmallDisk) -> None:
    filler = small_disk.fill()
    size = small_disk.outside(filler).stat().st_size
    path = small_disk.mountpoint / "state.db"
    assert_refused(service(small_disk.enter, path), path, "disk full")
    assert small_disk.outside(filler).stat().st_size == size
    assert sqlite_files(small_disk.outside(small_disk.mountpoint)) == []


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    # Outside pytest's tmp_path, whose parent only root may enter.
    directory = Path(tempfile.mkdtemp(prefix="graceful-state-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


# The service starts as root, loads its code, then becomes nobody (65534) for good, before it
# opens the store. Starting it as nobody (setpriv) would need the interpreter, the checkout
# and the venv readable by nobody, and a checkout under a 0700 directory (root's home, a
# `mktemp -d` folder) is not.
AS_NOBODY = textwrap.dedent(
    """
    import importlib.util, os, sys
    import graceful, graceful.integrations.streams, graceful.state
    for name in graceful.__all__:  # the package imports its names on first use: all now
        getattr(graceful, name)
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop
    script = sys.argv[1]
    with open(script) as f:
        code = compile(f.read(), script, "exec")
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    sys.argv = [script]
    exec(code, {"__name__": "__main__", "__file__": script})
    """
)


def service_as_nobody(state_path: Path) -> ServiceProcess:
    return ServiceProcess(
        [sys.executable, "-u", "-c", AS_NOBODY, str(WRITER)],
        env={"STATE_PATH": str(state_path), "GRACEFUL_STOP_TIMEOUT": "5"},
    )


async def test_read_only_file_for_a_non_root_service(unprivileged_dir: Path) -> None:
    path = unprivileged_dir / "state.db"
    await write_some([], path, ["a"])
    os.chown(unprivileged_dir, 65534, 65534)
    path.chmod(0o444)
    before = path.read_bytes()
    assert_refused(service_as_nobody(path), path, "file is read-only")
    assert path.read_bytes() == before


def test_read_only_directory_for_a_non_root_service(unprivileged_dir: Path) -> None:
    path = unprivileged_dir / "state.db"
    assert_refused(service_as_nobody(path), path, f"directory {unprivileged_dir} is not writable")
    assert list(unprivileged_dir.iterdir()) == []


# -- failing while running ---------------------------------------------------------------------


async def test_disk_full_while_serving_fails_writes_not_data(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    """The disk fills up under a running service.

    1. 20 writes are acknowledged.
    2. The file system is filled to the last byte; 50 more writes are attempted.
    3. The filler is removed; 10 more writes.
    4. SIGTERM.
    Result: while full, writes answer an error naming the path and "disk full" (never OK for
    a write that is not stored); every acknowledged write is stored and no refused one is;
    writes work again once there is room; exit 0; the file passes integrity_check.
    """
    path = small_disk.mountpoint / "state.db"
    acked: list[str] = []
    refused: list[str] = []
    with serving(small_disk.enter, path) as (proc, port):
        async with asyncio.timeout(HANG_GUARD):

            async def put(key: str) -> None:
                reply = await request(port, f"PUT {key}")
                if reply == f"OK {key} new":
                    acked.append(key)
                else:
                    assert reply.startswith(f"ERR {key} state store {path}:"), reply
                    assert "disk full" in reply, reply
                    refused.append(key)

            for i in range(20):
                await put(f"before-{i}")
            assert refused == []
            filler = small_disk.fill()
            for i in range(50):
                await put(f"full-{i}")
            assert refused, "the full disk never refused a write"
            small_disk.outside(filler).unlink()
            refused_while_full = len(refused)
            for i in range(10):
                await put(f"after-{i}")
            assert len(refused) == refused_while_full
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    assert "state.commit_failed" in proc.event_names()
    conn = sqlite3.connect(copied(small_disk.outside(path), tmp_path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = [k for (k,) in conn.execute("SELECT key FROM graceful_items ORDER BY rowid")]
    finally:
        conn.close()
    assert stored == acked
    assert not set(refused) & set(stored)

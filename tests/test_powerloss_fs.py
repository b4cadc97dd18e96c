"""The power-loss volume (graceful.harness.powerloss) on a real FUSE mount.

What a cut keeps (fsynced data, names whose directory was fsynced) and drops (everything
else), checked file by file, against a reference model (hypothesis), and with real SQLite and
graceful's `DurableStore`; controls show that an unsynced commit (``synchronous=NORMAL``) does
get lost, so the checks can fail. Skipped without FUSE or root; a failure when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import mmap
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graceful.harness.powerloss import PowerLossError, PowerLossVolume, is_mounted, unavailable
from tests.test_state_kill import integrity, stored_keys, writer_client

HANG_GUARD = 60.0


def require_fuse() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the power-loss volume cannot be mounted: {reason}")
    pytest.skip(reason)


@pytest.fixture
def volume() -> Iterator[PowerLossVolume]:
    require_fuse()
    # Not pytest's tmp_path: its parents are private to root, and uid 10001 must get in.
    top = Path(tempfile.mkdtemp(prefix="powerloss-"))
    top.chmod(0o755)
    try:
        with PowerLossVolume(top / "backing", top / "mnt") as vol:
            yield vol
        assert not is_mounted(vol.mountpoint)
    finally:
        shutil.rmtree(top)


def fsync(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, sync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def durable_file(path: Path, data: bytes) -> None:
    """A file that survives any cut: written, fsynced, and its directory fsynced."""
    write(path, data, sync=True)
    fsync(path.parent)


# -- files and names ------------------------------------------------------------------------


def test_fsynced_write_and_name_survive_a_cut(volume: PowerLossVolume) -> None:
    path = volume.mountpoint / "kept"
    durable_file(path, b"synced")
    assert volume.pending().files == ()
    report = volume.cut()
    assert report.reverted == report.removed == report.restored == ()
    assert path.read_bytes() == b"synced"


def test_unsynced_write_is_dropped_size_included(volume: PowerLossVolume) -> None:
    """Overwritten and extended without fsync: the synced bytes and size come back; bytes
    written and fsynced before the unsynced ones stay."""
    path = volume.mountpoint / "data"
    durable_file(path, b"a" * 5000)
    with open(path, "r+b") as f:
        f.write(b"b" * 3000)  # synced below
        f.flush()
        os.fsync(f.fileno())
        f.seek(1000)
        f.write(b"c" * 9000)  # crosses pages and the end of file: dropped
    assert path.read_bytes() == b"b" * 1000 + b"c" * 9000
    assert volume.pending().files == ("data",)
    assert volume.cut().reverted == ("data",)
    assert path.read_bytes() == b"b" * 3000 + b"a" * 2000


def test_unsynced_truncate_is_undone(volume: PowerLossVolume) -> None:
    path = volume.mountpoint / "data"
    original = bytes(range(256)) * 40  # 10240 bytes: three pages, the last one partial
    durable_file(path, original)
    os.truncate(path, 100)
    with open(path, "ab") as f:
        f.write(b"x" * 50)
    volume.cut()
    assert path.read_bytes() == original


def test_o_dsync_writes_are_durable_each(volume: PowerLossVolume) -> None:
    path = volume.mountpoint / "log"
    durable_file(path, b"")
    fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
    try:
        os.write(fd, b"each write is synced")
    finally:
        os.close(fd)
    volume.cut()
    assert path.read_bytes() == b"each write is synced"


def test_file_created_without_directory_fsync_disappears(volume: PowerLossVolume) -> None:
    mnt = volume.mountpoint
    write(mnt / "lost", b"data fsynced, name not", sync=True)
    write(mnt / "kept", b"both fsynced", sync=True)
    fsync(mnt)
    write(mnt / "late", b"after the directory fsync", sync=True)
    assert volume.pending().directories == (".",)
    report = volume.cut()
    assert report.removed == ("late",)
    assert sorted(os.listdir(mnt)) == ["kept", "lost"]
    assert (mnt / "lost").read_bytes() == b"data fsynced, name not"


def test_new_directory_needs_its_parent_fsynced(volume: PowerLossVolume) -> None:
    mnt = volume.mountpoint
    (mnt / "sub").mkdir()
    durable_file(mnt / "sub" / "file", b"in a directory whose own name is not synced")
    volume.cut()
    assert os.listdir(mnt) == []
    # Control: with the parent fsynced too, both stay.
    (mnt / "sub").mkdir()
    durable_file(mnt / "sub" / "file", b"synced all the way up")
    fsync(mnt)
    volume.cut()
    assert (mnt / "sub" / "file").read_bytes() == b"synced all the way up"


def test_rename_without_directory_fsync_is_undone(volume: PowerLossVolume) -> None:
    """The atomic-replace pattern without its last step (fsync of the directory)."""
    mnt = volume.mountpoint
    durable_file(mnt / "config", b"old")
    write(mnt / "config.tmp", b"new", sync=True)
    os.rename(mnt / "config.tmp", mnt / "config")
    report = volume.cut()
    assert report.restored == ()  # "config" was there all along, naming the new inode
    assert os.listdir(mnt) == ["config"]
    assert (mnt / "config").read_bytes() == b"old"
    # Control: the whole pattern, directory fsync included, survives.
    write(mnt / "config.tmp", b"new", sync=True)
    os.rename(mnt / "config.tmp", mnt / "config")
    fsync(mnt)
    volume.cut()
    assert os.listdir(mnt) == ["config"]
    assert (mnt / "config").read_bytes() == b"new"


def test_unlink_without_directory_fsync_is_undone(volume: PowerLossVolume) -> None:
    mnt = volume.mountpoint
    durable_file(mnt / "a", b"content of a")
    (mnt / "d").mkdir()
    fsync(mnt)
    (mnt / "a").unlink()
    (mnt / "d").rmdir()
    assert volume.cut().restored == ("a", "d")
    assert (mnt / "a").read_bytes() == b"content of a"
    assert (mnt / "d").is_dir()


def test_ownership_and_permissions_are_kept_for_other_users(volume: PowerLossVolume) -> None:
    """The service in a container runs as uid 10001: it writes through the mount, owns what
    it creates, keeps it across a cut, and other users get only what the modes allow."""
    data = volume.mountpoint / "data"
    data.mkdir(mode=0o750)
    os.chown(data, 10001, 10001)
    fsync(volume.mountpoint)
    script = f"cd {data} && printf hello > file && sync file . && mkdir sub"
    as_app = subprocess.run(["sh", "-c", script], user=10001, group=10001, capture_output=True)
    assert as_app.returncode == 0, as_app.stderr
    stranger = subprocess.run(["ls", str(data)], user=10002, group=10002, capture_output=True)
    assert stranger.returncode != 0  # control: modes are enforced for other users
    assert b"Permission denied" in stranger.stderr
    volume.cut()
    assert os.listdir(data) == ["file"]  # "sub" was never synced into "data"
    st_file, st_data = (data / "file").stat(), data.stat()
    assert (st_file.st_uid, st_file.st_gid, st_data.st_uid, st_data.st_mode & 0o777) == (
        10001,
        10001,
        10001,
        0o750,
    )
    assert (data / "file").read_bytes() == b"hello"


def test_files_left_open_fail_after_a_cut(volume: PowerLossVolume) -> None:
    """A machine that lost power serves no more calls: a descriptor kept across the cut
    errors instead of writing into the new volume."""
    path = volume.mountpoint / "open"
    durable_file(path, b"before")
    fd = os.open(path, os.O_RDWR)
    try:
        volume.cut()
        with pytest.raises(OSError) as caught:
            os.write(fd, b"after")
        assert caught.value.errno == errno.ENOTCONN
    finally:
        with contextlib.suppress(OSError):  # closing it fails the same way
            os.close(fd)
    assert path.read_bytes() == b"before"


# -- against a reference model --------------------------------------------------------------

NAMES = ("a", "b", "c")


@dataclass
class Reference:
    """The same model, written the simple way: whole files, a flat directory."""

    live: dict[str, int] = field(default_factory=dict)  # name -> inode
    data: dict[int, bytes] = field(default_factory=dict)  # inode -> live content
    synced: dict[int, bytes] = field(default_factory=dict)  # inode -> content at its fsync
    listing: dict[str, int] = field(default_factory=dict)  # names at the directory's fsync
    inodes: Iterator[int] = field(default_factory=itertools.count)

    def write(self, name: str, offset: int, chunk: bytes) -> None:
        if name not in self.live:
            self.live[name] = ino = next(self.inodes)
            self.data[ino] = self.synced[ino] = b""
        old = self.data[self.live[name]]
        padded = old.ljust(offset, b"\0")
        self.data[self.live[name]] = padded[:offset] + chunk + padded[offset + len(chunk) :]

    def truncate(self, name: str, size: int) -> None:
        ino = self.live[name]
        self.data[ino] = self.data[ino][:size].ljust(size, b"\0")

    def after_cut(self) -> dict[str, bytes]:
        return {name: self.synced[ino] for name, ino in self.listing.items()}


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.sampled_from(NAMES),
            st.integers(0, 9000),
            st.binary(min_size=1, max_size=5000),
        ),
        st.tuples(st.just("truncate"), st.sampled_from(NAMES), st.integers(0, 9000)),
        st.tuples(st.just("fsync"), st.sampled_from(NAMES)),
        st.tuples(st.just("unlink"), st.sampled_from(NAMES)),
        st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.tuples(st.just("fsyncdir")),
    ),
    max_size=25,
)


def apply(op: tuple[object, ...], mnt: Path, ref: Reference) -> None:
    kind, *args = op
    if kind == "fsyncdir":
        fsync(mnt)
        ref.listing = dict(ref.live)
        return
    name = str(args[0])
    path = mnt / name
    if kind == "write":
        offset, chunk = args[1], args[2]
        assert isinstance(offset, int)
        assert isinstance(chunk, bytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, chunk, offset)
        finally:
            os.close(fd)
        ref.write(name, offset, chunk)
    elif name not in ref.live:
        return  # the other operations need the file
    elif kind == "truncate":
        assert isinstance(args[1], int)
        os.truncate(path, args[1])
        ref.truncate(name, args[1])
    elif kind == "fsync":
        fsync(path)
        ref.synced[ref.live[name]] = ref.data[ref.live[name]]
    elif kind == "unlink":
        path.unlink()
        del ref.live[name]
    elif kind == "rename":
        os.rename(path, mnt / str(args[1]))
        ref.live[str(args[1])] = ref.live.pop(name)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_a_cut_leaves_what_the_reference_model_says(
    volume: PowerLossVolume, ops: list[tuple[object, ...]]
) -> None:
    """Random writes, truncations, fsyncs, unlinks, renames and directory fsyncs, then a cut:
    the files are what a simple whole-file model says, before the cut (pass-through) and
    after it. One volume for every example: each cut starts the next from a synced state."""
    mnt = volume.mountpoint
    ref = Reference()
    for name in os.listdir(mnt):  # what the previous example left, all synced by its cut
        ref.write(name, 0, (mnt / name).read_bytes())
        ref.synced[ref.live[name]] = ref.data[ref.live[name]]
    ref.listing = dict(ref.live)
    for op in ops:
        apply(op, mnt, ref)
    assert {n: (mnt / n).read_bytes() for n in os.listdir(mnt)} == {
        n: ref.data[i] for n, i in ref.live.items()
    }
    volume.cut()
    assert {n: (mnt / n).read_bytes() for n in os.listdir(mnt)} == ref.after_cut()


# -- shared mappings, SQLite and the durable store ------------------------------------------


def test_shared_writable_mmap_works_and_follows_fsync(volume: PowerLossVolume) -> None:
    """SQLite maps its -shm file shared and writable: that works here, and what is written
    through a mapping is durable only once synced, like any other write."""
    path = volume.mountpoint / "mapped"
    durable_file(path, b"\0" * mmap.PAGESIZE * 2)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        mapped[:6] = b"synced"
        mapped.flush()  # msync, then fsync: the kernel writes the page back first
        os.fsync(f.fileno())
        mapped[mmap.PAGESIZE : mmap.PAGESIZE + 8] = b"unsynced"
        assert os.pread(f.fileno(), 8, mmap.PAGESIZE) == b"unsynced"
    volume.cut()
    data = path.read_bytes()
    assert data[:6] == b"synced"
    assert data[mmap.PAGESIZE :] == b"\0" * mmap.PAGESIZE


def test_direct_io_would_break_sqlite_wal(tmp_path: Path) -> None:
    """Why the volume does not use direct_io: the kernel refuses a shared writable mapping of
    a direct_io file (ENODEV), and SQLite, which maps -shm that way in WAL mode, fails."""
    require_fuse()
    with PowerLossVolume(tmp_path / "b", tmp_path / "m", options=("direct_io",)) as vol:
        path = vol.mountpoint / "f"
        durable_file(path, b"\0" * mmap.PAGESIZE)
        with open(path, "r+b") as f, pytest.raises(OSError) as caught:
            mmap.mmap(f.fileno(), 0)
        assert caught.value.errno == errno.ENODEV
        conn = sqlite3.connect(vol.mountpoint / "t.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
                conn.execute("CREATE TABLE t(x)")
        finally:
            conn.close()


def open_wal(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB)")
    return conn


def commit_some(conn: sqlite3.Connection, rng: random.Random, ids: Iterator[int]) -> set[int]:
    """Random transactions of random rows; sometimes a checkpoint (which rewrites the WAL from
    its start afterwards). Returns the ids committed."""
    committed: set[int] = set()
    for _ in range(rng.randrange(1, 25)):
        batch = [next(ids) for _ in range(rng.randrange(1, 6))]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, rng.randbytes(rng.randrange(1, 6000))) for i in batch],
        )
        conn.execute("COMMIT")
        committed.update(batch)
        if rng.random() < 0.1:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return committed


def crash(conn: sqlite3.Connection) -> None:
    """Drop a connection whose volume lost power (its calls fail now)."""
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def stored(path: Path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {row[0] for row in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_sqlite_wal_full_keeps_every_commit_across_cuts(volume: PowerLossVolume, seed: int) -> None:
    """WAL mode with synchronous=FULL fsyncs the log at each commit: after each of several
    cuts, every committed row is there and the database is intact. The first cut also drops
    the -shm file SQLite wrote through its mapping: SQLite rebuilds it from the log."""
    rng = random.Random(seed)
    path = volume.mountpoint / "t.db"
    ids = itertools.count()
    committed: set[int] = set()
    for round_ in range(4):
        conn = open_wal(path, "FULL")
        committed |= commit_some(conn, rng, ids)
        report = volume.cut()
        crash(conn)
        if round_ == 0:
            assert "t.db-shm" in report.reverted
        assert stored(path) == committed


OTHER_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA synchronous=FULL")
for i in range(int(sys.argv[2]), int(sys.argv[2]) + 20):
    conn.execute("INSERT INTO t VALUES (?, ?)", (i, b"from another process"))
conn.close()
"""


def test_sqlite_wal_shared_by_two_processes(volume: PowerLossVolume) -> None:
    """Two processes commit in turn to one WAL database while both keep it open: the -shm
    mapping they share stays coherent (each open of it reaches the file system), and after a
    cut every row committed by either is there."""
    path = volume.mountpoint / "t.db"
    conn = open_wal(path, "FULL")
    committed: set[int] = set()
    for turn in range(3):
        base = 1000 * turn
        other = subprocess.run(
            [sys.executable, "-c", OTHER_WRITER, str(path), str(base)], capture_output=True
        )
        assert other.returncode == 0, other.stderr
        conn.execute("INSERT INTO t VALUES (?, ?)", (base + 500, b"from the test"))
        committed |= {*range(base, base + 20), base + 500}
        assert {row[0] for row in conn.execute("SELECT id FROM t")} == committed
    volume.cut()
    crash(conn)
    assert stored(path) == committed


def test_sqlite_wal_normal_loses_commits_control(volume: PowerLossVolume) -> None:
    """Control: synchronous=NORMAL does not fsync at commit, so a cut loses committed rows
    (a SIGKILL would not). The volume can tell the two apart."""
    path = volume.mountpoint / "t.db"
    conn = open_wal(path, "FULL")  # the table itself is durable
    conn.close()
    conn = open_wal(path, "NORMAL")
    committed = commit_some(conn, random.Random(3), itertools.count())
    volume.cut()
    crash(conn)
    kept = stored(path)
    assert kept < committed, "synchronous=NORMAL lost nothing: the cut dropped nothing"


def test_durable_store_keeps_every_acknowledged_put(volume: PowerLossVolume) -> None:
    """graceful's DurableStore in a writer process under 16 clients; at a random
    acknowledgement the writer is SIGKILLed and the power cut at once. A new writer on the
    volume opens the store cleanly and has every acknowledged key. (A plain function: the
    writer picks its own loop, running the clients on two would only double the time.)"""
    from tests.test_state_kill import running_writer

    path = volume.mountpoint / "state.db"
    cut_after = random.Random(11).randrange(100, 400)
    acked: set[str] = set()
    errors: list[str] = []
    ids = (f"k{n}" for n in itertools.count())

    def on_ack(key: str) -> None:
        acked.add(key)
        if len(acked) == cut_after:
            os.kill(proc.pid, signal.SIGKILL)
            volume.cut()

    async def load(port: int) -> None:
        async with asyncio.timeout(HANG_GUARD):
            await asyncio.gather(*(writer_client(port, ids, on_ack, errors) for _ in range(16)))

    async def keys(port: int) -> set[str]:
        async with asyncio.timeout(HANG_GUARD):
            return set(await stored_keys(port))

    with running_writer(path) as (proc, port):
        asyncio.run(load(port))
        assert proc.wait() == -signal.SIGKILL
    assert errors == []
    assert len(acked) >= cut_after
    with running_writer(path) as (proc, port):
        lost = acked - asyncio.run(keys(port))
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output()
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
    assert integrity(path) == [("ok",)]


# -- the mount never outlives its owner -----------------------------------------------------


def test_the_mount_is_removed_when_the_block_raises(tmp_path: Path) -> None:
    """Also with a file still open on it (a busy mount is detached lazily)."""
    require_fuse()
    volume = PowerLossVolume(tmp_path / "b", tmp_path / "m")
    held: list[int] = []

    def interrupted_while_busy() -> None:
        with volume:
            assert is_mounted(volume.mountpoint)
            held.append(os.open(volume.mountpoint / "held", os.O_CREAT | os.O_WRONLY))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_while_busy()
    assert not is_mounted(volume.mountpoint)
    assert not volume.mounted
    with contextlib.suppress(OSError):  # the file system is gone: closing fails
        os.close(held[0])
    with pytest.raises(PowerLossError, match="not mounted"):
        volume.cut()


def wait_gone(pid: int) -> None:
    """Wait for a process that is not our child to end (pidfd: readable when it exits)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], HANG_GUARD)[0], f"process {pid} still runs"
    finally:
        os.close(fd)


OWNER = """
import sys, time
from graceful.harness.powerloss import PowerLossVolume
with PowerLossVolume(sys.argv[1], sys.argv[2]) as volume:
    print(volume.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_the_mount_goes_with_its_owner(tmp_path: Path, how: str) -> None:
    """Ctrl-C (SIGINT to the owner's process group) unmounts through the ``with`` block; an
    owner killed outright leaves the file system's stdin at end-of-file, and it unmounts
    itself. Either way, the file system process ends and nothing stays mounted."""
    require_fuse()
    mountpoint = tmp_path / "m"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "b"), str(mountpoint)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        fs_pid = int(owner.stdout.readline())
        assert is_mounted(mountpoint)
        if how == "ctrl-c":
            os.killpg(owner.pid, signal.SIGINT)
        else:
            owner.kill()
        owner.wait(HANG_GUARD)
        wait_gone(fs_pid)
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert not is_mounted(mountpoint)

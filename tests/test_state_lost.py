"""A store whose file is deleted or replaced while it is open refuses, and never acknowledges.

SQLite writes through the descriptors it opened: after an entrypoint or a sidecar wipes the
volume, or a backup is renamed over the file, every commit still succeeds, into a file nobody
will open again. Each test below has a control that switches the store's check off
(``OpenedFile.check`` answers "unchanged") and shows the fault: the write is acknowledged, and
it is not there after a reopen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from graceful.exceptions import StateError
from graceful.state import DurableStore
from graceful.state.identity import OpenedFile
from tests.support import APPS, ServiceProcess
from tests.test_state_kill import request

WRITER = APPS / "state_writer.py"


def wipe(directory: Path) -> None:
    """What a sidecar wiping the volume does: every file goes, the store's three included."""
    for name in os.listdir(directory):
        os.remove(directory / name)


def replace_with_another_store(path: Path, other: Path) -> None:
    """Rename a closed store (holding the key "theirs") over ``path``, as a restore does."""

    async def make() -> None:
        async with DurableStore(other, registry=None) as store:
            await store.put("theirs", "restored")

    # A thread of its own: the test's loop is running; the store needs a loop to open.
    t = threading.Thread(target=lambda: asyncio.run(make()))
    t.start()
    t.join()
    os.replace(other, path)


async def keys_after_reopen(path: Path) -> list[str]:
    async with DurableStore(path, registry=None) as store:
        return await store.keys()


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the store's check switched off, as it was before it existed."""
    monkeypatch.setattr(OpenedFile, "check", lambda self: None)


def lost_count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("graceful_state_file_lost_total") or 0.0


# -- the volume wiped --------------------------------------------------------------------------


async def test_a_deleted_file_is_refused_loudly_from_the_next_write_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.db"
    registry = CollectorRegistry()
    store = DurableStore(path, registry=registry)
    with capture_logs() as logs:
        await store.open()
        assert await store.put("before", "x") is True
        wipe(data)
        for call in (
            lambda: store.put("after", "y"),
            lambda: store.put_many({"many": "z"}),
            lambda: store.get("before"),
            lambda: store.keys(),
            lambda: store.count(),
            lambda: store.put("again", "w"),
        ):
            with pytest.raises(StateError) as caught:
                await call()
            assert f"state store {path}:" in str(caught.value)
            assert "deleted while the store was open" in str(caught.value)
        assert not store.is_open
        with pytest.raises(StateError, match="deleted while the store was open"):
            await store.close()  # what it had acknowledged is gone: the close says so
    lost = [e for e in logs if e["event"] == "state.file_lost"]
    assert len(lost) == 1, logs  # one error line, however many calls were refused
    assert lost[0]["log_level"] == "error"
    assert lost[0]["path"] == str(path)
    assert lost_count(registry) == 1
    assert "after" not in await keys_after_reopen(path)


async def test_control_unchecked_a_deleted_file_acknowledges_what_it_loses(
    tmp_path: Path, unchecked: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "state.db"
    async with DurableStore(path, registry=None) as store:
        assert await store.put("before", "x") is True
        wipe(data)
        assert await store.put("after", "y") is True  # acknowledged...
        with pytest.raises(StateError, match="SQLITE_IOERR_FSTAT"):
            await store.get("after")  # ... while reads fail with SQLite's bare error
    assert await keys_after_reopen(path) == []  # ... and gone


async def test_a_read_of_a_deleted_file_says_why(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=None)
    await store.open()
    await store.put("k", "v")
    wipe(tmp_path)
    with pytest.raises(StateError, match="deleted while the store was open") as caught:
        await store.get("k")
    assert "SQLITE_IOERR_FSTAT" not in str(caught.value)  # the cause is kept, the reason told
    with pytest.raises(StateError, match="deleted while the store was open"):
        await store.put("later", "v")  # and from then on the writer refuses too
    with pytest.raises(StateError):
        await store.close()


# -- a file renamed over it --------------------------------------------------------------------


async def test_a_file_renamed_over_the_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    registry = CollectorRegistry()
    store = DurableStore(path, registry=registry)
    await store.open()
    assert await store.put("ours", "1") is True
    replace_with_another_store(path, tmp_path / "backup.db")
    with pytest.raises(StateError, match="replaced by another file") as caught:
        await store.put("after", "2")
    assert str(path) in str(caught.value)
    with pytest.raises(StateError, match="replaced by another file"):
        await store.close()
    assert lost_count(registry) == 1
    # The file now at the path is the restored one, untouched by the old opening.
    assert await keys_after_reopen(path) == ["theirs"]


async def test_control_unchecked_a_file_renamed_over_is_clobbered_by_the_old_log(
    tmp_path: Path, unchecked: None
) -> None:
    path = tmp_path / "state.db"
    async with DurableStore(path, registry=None) as store:
        assert await store.put("ours", "1") is True
        replace_with_another_store(path, tmp_path / "backup.db")
        assert await store.put("after", "2") is True  # acknowledged into the replaced file
        assert await store.get("after") == "2"  # even read back, from the replaced file
    # SQLite left the old opening's -wal at the path, and the next opening replays it onto
    # the restored file: the restore is silently undone (with another schema: corruption).
    assert "theirs" not in await keys_after_reopen(path)


# -- the -wal deleted alone --------------------------------------------------------------------

# In a child, so that the process can die as `docker kill` ends it (no close, no checkpoint):
# the acknowledged writes live only in the -wal until a checkpoint.
_WAL_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from graceful.state import DurableStore
    from graceful.state.identity import OpenedFile

    if sys.argv[2] == "unchecked":
        OpenedFile.check = lambda self: None

    async def main(path):
        store = DurableStore(path, registry=None)
        await store.open()
        await store.put("before", "x")
        os.remove(path + "-wal")
        try:
            print("put", await store.put("after", "y"), flush=True)
        except Exception as exc:
            print("refused", exc, flush=True)
        os._exit(0)  # SIGKILL-like: nothing closes, nothing checkpoints

    asyncio.run(main(sys.argv[1]))
    """
)


def run_wal_child(path: Path, mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _WAL_CHILD, str(path), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


async def test_a_deleted_wal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    out = run_wal_child(path, "checked")
    assert "refused" in out, out
    assert f"{path}-wal was deleted" in out, out
    # The refusal checkpointed the deleted log into the file still at the path: the write
    # acknowledged before the deletion is saved (the refused one may be stored too: never
    # the reverse, an acknowledged write missing).
    assert "before" in await keys_after_reopen(path)


async def test_control_unchecked_a_deleted_wal_acknowledges_what_a_kill_loses(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    out = run_wal_child(path, "unchecked")
    assert "put True" in out, out
    assert await keys_after_reopen(path) == []  # both acknowledged, both gone


# -- a real service ----------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "volume"
    data.mkdir()
    return data


def writer_service(data: Path) -> ServiceProcess:
    return ServiceProcess.python(
        WRITER, env={"STATE_PATH": str(data / "state.db"), "GRACEFUL_STOP_TIMEOUT": "5"}
    )


@pytest.fixture
def service(data_dir: Path) -> Iterator[tuple[ServiceProcess, int]]:
    proc = writer_service(data_dir)
    try:
        yield proc, int(proc.wait_event("writer.listening")["port"])
    finally:
        proc.kill()


@pytest.mark.parametrize("wiped", [True, False], ids=["wiped", "control-not-wiped"])
async def test_a_service_whose_volume_is_wiped_stops_acknowledging(
    data_dir: Path, service: tuple[ServiceProcess, int], wiped: bool
) -> None:
    proc, port = service
    assert await request(port, "PUT a") == "OK a new"
    if wiped:
        wipe(data_dir)
    replies = [await request(port, f"PUT k{i}") for i in range(3)]
    proc.signal(signal.SIGTERM)
    code = proc.wait(30)
    names = proc.event_names()
    if not wiped:
        assert replies == ["OK k0 new", "OK k1 new", "OK k2 new"]
        assert code == 0, proc.output()
        assert "state.file_lost" not in names, proc.output()
        return
    assert all(r.startswith("ERR ") and "deleted while the store was open" in r for r in replies)
    assert names.count("state.file_lost") == 1, proc.output()
    # The close hook fails (what was acknowledged before the wipe is gone): exit 4, not 0.
    assert code == 4, proc.output()
    assert "hook.failed" in names, proc.output()
    report = next(e for e in proc.events() if e.get("event") == "shutdown.report")
    assert report["exit_code"] == code

"""Unit tests of graceful.state on real SQLite files: the durable store and the batcher."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from graceful.config import Config
from graceful.exceptions import GracefulError, StateError
from graceful.runtime import ExitCode, Runtime
from graceful.state import Batcher, DurableStore

HANG_GUARD = 10.0


def commits(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("graceful_state_commits_total") or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def store(tmp_path: Path, registry: CollectorRegistry) -> AsyncIterator[DurableStore]:
    s = DurableStore(tmp_path / "state.db", registry=registry)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def quiet_config() -> Config:
    return Config(handle_signals=False, log_format="off", stop_timeout=5.0)


class ExternalWriter:
    """A second, real SQLite connection that holds the write lock (as another process would)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def lock(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


# -- DurableStore ------------------------------------------------------------------------------


async def test_put_is_idempotent_and_values_round_trip(store: DurableStore) -> None:
    assert await store.put("a", {"n": 1, "s": "x"}) is True
    assert await store.put("a", {"n": 2}) is False  # first value stays
    assert await store.put("b", "text") is True
    assert await store.put("c", b"\x00\xff") is True
    assert await store.put("d") is True
    assert await store.get("a") == {"n": 1, "s": "x"}
    assert await store.get("b") == "text"
    assert await store.get("c") == b"\x00\xff"
    assert await store.get("d") is None
    assert await store.get("missing", "default") == "default"
    assert await store.keys() == ["a", "b", "c", "d"]
    assert await store.count() == 4


async def test_put_many_counts_new_keys(store: DurableStore) -> None:
    await store.put("x")
    assert await store.put_many([("x", None), ("y", "1"), ("z", {"k": []})]) == 2
    assert await store.put_many({"z": None, "w": b"w"}) == 1
    assert await store.put_many([]) == 0
    assert await store.keys() == ["x", "y", "z", "w"]


async def test_bad_types_fail_only_their_caller(store: DurableStore) -> None:
    with pytest.raises(TypeError):
        await store.put("k", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put(7, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put("k", {"not json": object()})
    assert await store.put("k", "v") is True


async def test_reopen_after_close_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = DurableStore(path, registry=None)
    await first.open()
    await first.put_many([(f"k{i}", {"i": i}) for i in range(50)])
    await first.close()
    with pytest.raises(StateError, match="not open"):
        await first.put("late")

    await first.open()  # the same object opens again
    assert await first.count() == 50
    await first.close()

    second = DurableStore(path, registry=None)
    await second.open()
    assert await second.put("k7") is False
    assert await second.get("k7") == {"i": 7}
    assert await second.count() == 50
    await second.close()
    # The last connection checkpointed the WAL into the main file and removed it.
    assert not (tmp_path / "state.db-wal").exists()


async def test_concurrent_puts_share_commits(tmp_path: Path, registry: CollectorRegistry) -> None:
    """N concurrent puts take at most 2 transactions.

    1. Another connection holds the write lock, so the writer thread is stuck on whatever it
       picked up first.
    2. N puts are queued behind it in one loop iteration.
    3. The lock is released: the first batch commits, then everything queued commits at once.
    Result: commits <= 2 < N, and every put is acknowledged as new.
    """
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=registry)
    await store.open()
    other = ExternalWriter(str(path))
    before = commits(registry)
    n = 200
    other.lock()
    try:
        puts = [asyncio.ensure_future(store.put(f"k{i}", {"i": i})) for i in range(n)]
        await asyncio.sleep(0)  # every put task has run up to its wait
        assert not any(p.done() for p in puts)  # nothing acknowledged while not committed
    finally:
        other.release()
        other.close()
    async with asyncio.timeout(HANG_GUARD):
        results = await asyncio.gather(*puts)
    assert results == [True] * n
    assert 1 <= commits(registry) - before <= 2
    assert registry.get_sample_value("graceful_state_items_written_total") == n
    assert await store.count() == n
    await store.close()


async def test_max_batch_1_commits_each_write(tmp_path: Path, registry: CollectorRegistry) -> None:
    """The same load with group commit off: one transaction per put."""
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=registry, max_batch=1)
    await store.open()
    other = ExternalWriter(str(path))
    n = 20
    other.lock()
    puts = [asyncio.ensure_future(store.put(f"k{i}")) for i in range(n)]
    await asyncio.sleep(0)
    other.release()
    other.close()
    async with asyncio.timeout(HANG_GUARD):
        await asyncio.gather(*puts)
    assert commits(registry) == n
    await store.close()


async def hold_writer(store: DurableStore) -> tuple[threading.Event, asyncio.Future[object]]:
    """Park the writer thread inside a queued call until the returned event is set.

    This reaches into the store's queue (``_submit``) on purpose: it is the one way to know
    for certain that later puts are all queued while the writer is busy.
    """
    return await park(store._submit)


async def park(
    submit: Callable[[Callable[[sqlite3.Connection], None]], Awaitable[object]],
) -> tuple[threading.Event, asyncio.Future[object]]:
    """Park a thread of the store (``submit`` queues a call on it) until the event is set."""
    entered, release = threading.Event(), threading.Event()

    def parked_call(_conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(HANG_GUARD)

    parked = asyncio.ensure_future(submit(parked_call))
    await asyncio.to_thread(entered.wait, HANG_GUARD)
    return release, parked


async def test_writes_queued_during_a_commit_form_one_transaction(
    store: DurableStore, registry: CollectorRegistry
) -> None:
    release, parked = await hold_writer(store)
    before = commits(registry)
    puts = [asyncio.ensure_future(store.put(f"k{i}")) for i in range(100)]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked
        assert await asyncio.gather(*puts) == [True] * 100
    assert commits(registry) - before == 1
    assert registry.get_sample_value("graceful_state_batch_size_sum") == 100


async def test_the_same_key_twice_in_one_transaction_is_new_once(store: DurableStore) -> None:
    await store.put("old")
    release, parked = await hold_writer(store)
    keys = ["a", "old", "a", "b", "a", "old"]
    puts = [asyncio.ensure_future(store.put(k, {"k": k})) for k in keys]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked
        assert await asyncio.gather(*puts) == [True, False, False, True, False, False]
    # Bytes take the row-by-row path; the answers must be the same.
    release, parked = await hold_writer(store)
    bytes_puts = [asyncio.ensure_future(store.put(k, b"x")) for k in ("c", "c", "old")]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked
        assert await asyncio.gather(*bytes_puts) == [True, False, False]
    assert await store.keys() == ["old", "a", "b", "c"]
    assert await store.put_many([("d", None), ("d", "x"), ("e", None)]) == 2


async def test_one_bad_write_fails_alone(store: DurableStore, registry: CollectorRegistry) -> None:
    """A write that aborts its transaction fails alone; the others in it are committed.

    1. Two items are committed.
    2. Another connection installs a trigger that aborts any insert of key "bad".
    3. Four puts ("a", "b", "bad", "c") and a put_many holding "bad" are queued while the
       writer is held, so they share one transaction.
    Result: "bad" and the put_many raise StateError naming the path and the trigger's
    message; "a", "b" and "c" are acknowledged and stored (the batch was split down to the
    write at fault); nothing of the put_many is stored; later puts succeed.
    """
    await store.put_many([("old1", "x"), ("old2", "y")])
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON graceful_items WHEN NEW.key = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
    )
    release, parked = await hold_writer(store)
    puts = [asyncio.ensure_future(store.put(k)) for k in ("a", "b", "bad", "c")]
    many = asyncio.ensure_future(store.put_many([("m1", None), ("bad", None), ("m2", None)]))
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked
        results = await asyncio.gather(*puts, many, return_exceptions=True)
    assert [results[0], results[1], results[3]] == [True, True, True], results
    for failed in (results[2], results[4]):
        assert isinstance(failed, StateError), results
        assert store.path in str(failed)
        assert "refused by trigger" in str(failed)
    assert registry.get_sample_value("graceful_state_commit_failures_total") == 2
    assert await store.keys() == ["old1", "old2", "a", "b", "c"]
    other.execute("DROP TRIGGER boom")
    other.close()
    assert await store.put("bad") is True
    assert await store.keys() == ["old1", "old2", "a", "b", "c", "bad"]


async def test_a_failure_of_the_file_fails_the_whole_batch(tmp_path: Path) -> None:
    """The control: a lock held by another process is not one write's fault.

    Three puts share a transaction that cannot take the write lock. Result: all three raise
    "locked" and the batch is not split (one failed transaction, not three or five).
    """
    registry = CollectorRegistry()
    store = DurableStore(tmp_path / "state.db", registry=registry, busy_timeout=0.05)
    await store.open()
    other = ExternalWriter(store.path)
    release, parked = await hold_writer(store)
    other.lock()
    try:
        puts = [asyncio.ensure_future(store.put(k)) for k in ("a", "b", "c")]
        await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(HANG_GUARD):
            await parked
            results = await asyncio.gather(*puts, return_exceptions=True)
    finally:
        other.release()
        other.close()
    assert all(isinstance(r, StateError) and "locked" in str(r) for r in results), results
    assert registry.get_sample_value("graceful_state_commit_failures_total") == 1
    assert await store.keys() == []
    await store.close()


async def test_put_many_is_atomic(store: DurableStore) -> None:
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON graceful_items WHEN NEW.key = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    other.close()
    with pytest.raises(StateError):
        await store.put_many([("a", None), ("b", None), ("bad", None)])
    assert await store.count() == 0


async def test_reads_do_not_wait_for_the_writer(store: DurableStore) -> None:
    """Reads run on their own connections: they answer while the writer thread is busy.

    1. Two items are committed.
    2. The writer thread is parked (as a long commit, or a lock held elsewhere, holds it).
    3. get, keys and count; then a put.
    Result: the reads answer with the committed data while the writer is still parked; the
    put waits for the writer (it is not acknowledged before its commit) and is new once
    the writer is released.
    """
    await store.put_many([("a", {"n": 1}), ("b", b"\x00")])
    release, parked = await hold_writer(store)
    try:
        async with asyncio.timeout(HANG_GUARD):
            assert await store.get("a") == {"n": 1}
            assert await store.keys() == ["a", "b"]
            assert await store.count() == 2
        pending = asyncio.ensure_future(store.put("c"))
        await asyncio.sleep(0)
        assert not pending.done()
    finally:
        release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked
        assert await pending is True
    assert await store.keys() == ["a", "b", "c"]


async def test_a_long_read_does_not_hold_back_writes(store: DurableStore) -> None:
    """The other way round: a read parked on a reader thread, puts are acknowledged."""
    release, parked = await park(store._read)
    try:
        async with asyncio.timeout(HANG_GUARD):
            assert await asyncio.gather(*(store.put(f"k{i}") for i in range(50))) == [True] * 50
            assert not parked.done()
            assert await store.count() == 50  # the other reader answers meanwhile
    finally:
        release.set()
    async with asyncio.timeout(HANG_GUARD):
        await parked


async def test_keys_page_by_page(store: DurableStore) -> None:
    written = [f"k{i}" for i in range(10)] + ["a\x00b", ""]
    for key in written:
        await store.put(key)
    assert await store.keys() == written
    assert await store.keys(limit=3) == written[:3]
    assert await store.keys(limit=3, after="k2") == written[3:6]
    assert await store.keys(after="k9") == ["a\x00b", ""]
    assert await store.keys(after="a\x00b") == [""]
    assert await store.keys(after="") == []
    assert await store.keys(limit=0) == []
    pages: list[str] = []
    after: str | None = None
    while page := await store.keys(limit=5, after=after):
        pages += page
        after = page[-1]
    assert pages == written
    with pytest.raises(KeyError):
        await store.keys(after="a")  # a prefix of a stored key is not that key
    with pytest.raises(ValueError, match="negative"):
        await store.keys(limit=-1)
    with pytest.raises(TypeError):
        await store.keys(limit="3")  # type: ignore[arg-type]


async def test_store_and_batcher_are_async_context_managers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async with DurableStore(path, registry=None) as store:
        assert store.is_open

        async def write(items: list[tuple[str, str]]) -> None:
            await store.put_many(items)

        batcher: Batcher[tuple[str, str]]
        async with Batcher(write, max_items=100, max_age=None) as batcher:
            await batcher.add(("k", "v"))
            assert await store.count() == 0
        assert await store.get("k") == "v"  # leaving the block flushed it
        with pytest.raises(StateError, match="closed"):
            await batcher.add(("late", "v"))
    assert not store.is_open
    assert not (tmp_path / "state.db-wal").exists()  # closed: the log was checkpointed

    with pytest.raises(RuntimeError, match="inside"):
        async with DurableStore(path, registry=None) as again:
            raise RuntimeError("inside")
    assert not again.is_open
    async with DurableStore(path, registry=None) as third:
        assert await third.keys() == ["k"]


async def test_lock_held_too_long_fails_the_write_not_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=None, busy_timeout=0.05)
    await store.open()
    await store.put("before")
    other = ExternalWriter(str(path))
    other.lock()
    try:
        with pytest.raises(StateError, match="locked"):
            async with asyncio.timeout(HANG_GUARD):
                await store.put("during")
    finally:
        other.release()
        other.close()
    assert await store.put("after") is True
    assert await store.keys() == ["before", "after"]
    await store.close()


async def test_close_commits_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=None)
    await store.open()
    puts = [asyncio.ensure_future(store.put(f"k{i}")) for i in range(10)]
    await asyncio.sleep(0)
    await store.close()
    assert all(p.done() and p.result() is True for p in puts)
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM graceful_items").fetchone() == (10,)
    check.close()


async def test_close_twice_at_once_does_not_hang(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "state.db", registry=None)
    await store.open()
    await store.put("k")
    async with asyncio.timeout(HANG_GUARD):
        await asyncio.gather(store.close(), store.close())
    assert not store.is_open


async def test_open_refuses_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "state.db"
    store = DurableStore(path, registry=None)
    with pytest.raises(StateError, match="does not exist") as info:
        await store.open()
    assert str(path) in str(info.value)
    assert isinstance(info.value, GracefulError)
    assert not path.parent.exists()


async def test_open_refuses_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    store = DurableStore(path, registry=None)
    with pytest.raises(StateError, match="another application"):
        await store.open()
    assert path.read_bytes() == before


async def test_an_empty_file_is_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    store = DurableStore(path, registry=None)
    await store.open()
    assert await store.put("k") is True
    await store.close()


async def test_attach_opens_at_startup_and_closes_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    runtime = Runtime(quiet_config(), registry=CollectorRegistry())
    store = DurableStore(path, registry=runtime.registry)
    store.attach(runtime)
    seen: list[bool] = []

    async def main(rt: Runtime) -> None:
        seen.append(store.is_open)
        await store.put("during-serve", {"ok": True})
        rt.request_stop("test")

    async with asyncio.timeout(HANG_GUARD):
        code = await runtime.serve(main)
    assert code == ExitCode.OK
    assert seen == [True]
    assert not store.is_open
    check = sqlite3.connect(path)
    assert check.execute("SELECT key FROM graceful_items").fetchall() == [("during-serve",)]
    check.close()


async def test_attach_with_a_bad_path_fails_startup(tmp_path: Path) -> None:
    runtime = Runtime(quiet_config(), registry=CollectorRegistry())
    DurableStore(tmp_path / "missing" / "s.db", registry=None).attach(runtime)
    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD):
            code = await runtime.serve()
    assert code == ExitCode.ERROR
    failed = [e for e in logs if e["event"] == "startup.failed"]
    assert failed
    assert "does not exist" in failed[0]["error"]


# -- Batcher -----------------------------------------------------------------------------------


class Sink:
    """A flush target that records batches and can be told to fail."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.attempts = 0
        self.flushed = asyncio.Event()

    async def __call__(self, items: list[int]) -> None:
        self.attempts += 1
        if self.fail > 0:
            self.fail -= 1
            raise OSError("sink unavailable")
        self.batches.append(list(items))
        self.flushed.set()


async def test_batcher_flushes_on_size() -> None:
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, max_items=3, max_age=None)
    await batcher.add(1)
    await batcher.add(2)
    assert sink.batches == []
    assert batcher.pending == 2
    await batcher.add(3)  # returns once the full batch is flushed
    assert sink.batches == [[1, 2, 3]]
    assert batcher.pending == 0
    assert batcher.flushed == 3


async def test_batcher_flushes_on_age() -> None:
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, max_items=100, max_age=0.02)
    await batcher.add(1)
    await batcher.add(2)
    async with asyncio.timeout(HANG_GUARD):
        await sink.flushed.wait()
    assert sink.batches == [[1, 2]]
    # A new item arms a new timer.
    sink.flushed.clear()
    await batcher.add(3)
    async with asyncio.timeout(HANG_GUARD):
        await sink.flushed.wait()
    assert sink.batches == [[1, 2], [3]]


async def test_failed_flush_keeps_items_in_order_and_retries() -> None:
    sink = Sink(fail=1)
    batcher: Batcher[int] = Batcher(sink, max_items=2, max_age=0.02)
    with capture_logs() as logs:
        await batcher.add(1)
        await batcher.add(2)  # size flush fails: logged, not raised
        assert batcher.pending == 2
        await batcher.add(3)
        async with asyncio.timeout(HANG_GUARD):
            await sink.flushed.wait()  # the age timer retried
    assert sink.batches == [[1, 2, 3]]
    assert batcher.pending == 0
    failed = [e for e in logs if e["event"] == "state.flush_failed"]
    assert len(failed) == 1
    assert failed[0]["items"] == 2
    assert "sink unavailable" in failed[0]["error"]
    assert [e["count"] for e in logs if e["event"] == "state.flushed"] == [3]


async def test_explicit_flush_raises_and_keeps_items() -> None:
    sink = Sink(fail=1)
    batcher: Batcher[int] = Batcher(sink, max_items=10, max_age=None)
    await batcher.add(1)
    with pytest.raises(OSError, match="sink unavailable"):
        await batcher.flush()
    assert batcher.pending == 1
    assert await batcher.flush() == 1
    assert sink.batches == [[1]]


async def test_shutdown_flushes_what_is_buffered() -> None:
    runtime = Runtime(quiet_config(), registry=CollectorRegistry())
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, max_items=100, max_age=60)
    batcher.attach(runtime)

    async def main(rt: Runtime) -> None:
        for i in range(7):
            await batcher.add(i)
        rt.request_stop("test")

    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD):
            code = await runtime.serve(main)
    assert code == ExitCode.OK
    assert sink.batches == [list(range(7))]
    assert runtime.registry.get_sample_value("graceful_flushed_items_total") == 7
    report = next(e for e in logs if e["event"] == "shutdown.report")
    assert report["flushed"] == 7
    flushed = [e for e in logs if e["event"] == "state.flushed"]
    assert flushed[0]["reason"] == "shutdown"
    assert flushed[0]["count"] == 7
    with pytest.raises(StateError, match="closed"):
        await batcher.add(99)


async def test_failed_final_flush_fails_the_hook() -> None:
    runtime = Runtime(quiet_config(), registry=CollectorRegistry())
    sink = Sink(fail=100)
    batcher: Batcher[int] = Batcher(sink, max_items=100, max_age=None)
    batcher.attach(runtime)

    async def main(rt: Runtime) -> None:
        await batcher.add(1)
        rt.request_stop("test")

    with capture_logs() as logs:
        async with asyncio.timeout(HANG_GUARD):
            code = await runtime.serve(main)
    assert code == ExitCode.HOOK_FAILED
    assert batcher.pending == 1
    assert any(e["event"] == "hook.failed" and "sink unavailable" in e["error"] for e in logs)


async def test_batcher_into_store_end_to_end(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "state.db", registry=None)
    await store.open()

    async def write(items: list[tuple[str, dict[str, int]]]) -> None:
        await store.put_many(items)

    batcher: Batcher[tuple[str, dict[str, int]]] = Batcher(write, max_items=10, max_age=None)
    for i in range(25):
        await batcher.add((f"job-{i}", {"i": i}))
    assert await store.count() == 20
    await batcher.close()
    assert await store.count() == 25
    await store.close()


def test_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        DurableStore(tmp_path / "s.db", max_batch=0)
    with pytest.raises(ValueError, match="max_items"):
        Batcher(Sink(), max_items=0)
    with pytest.raises(ValueError, match="max_age"):
        Batcher(Sink(), max_age=0)


# -- docs --------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "state.md"


def doc_examples() -> list[str]:
    blocks = DOCS.read_text().split("```python\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


@pytest.mark.parametrize("index", range(len(doc_examples())))
def test_docs_examples_run(index: int) -> None:
    """Every Python example in docs/state.md runs as a script and its asserts hold."""
    done = subprocess.run(
        [sys.executable, "-c", doc_examples()[index]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_stores_that_share_a_registry_share_its_metrics(tmp_path: Path) -> None:
    """A store opened after another one closed, in the same registry (a second test's app,
    the default registry), used to fail with ``DuplicateTimeseries`` (found by a new user's
    second test). Now both count into the same metrics. Control: two sets of the same
    metrics registered in one registry are still refused by prometheus-client."""
    from prometheus_client import Counter

    registry = CollectorRegistry()
    async with DurableStore(tmp_path / "one.db", registry=registry) as first:
        await first.put("a", "1")
    async with DurableStore(tmp_path / "two.db", registry=registry) as second:
        await second.put("b", "2")
        async with DurableStore(tmp_path / "three.db", registry=registry) as third:
            await third.put("c", "3")
    assert registry.get_sample_value("graceful_state_commits_total") == 3
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("graceful_state_commits", "again", registry=registry)

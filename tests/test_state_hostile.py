"""The durable store under hostile input: whatever it acknowledges comes back exactly, and
whatever it cannot keep exactly is refused with a clear error before it is written.

Property tests (hypothesis) drive a real store on real SQLite files: arbitrary Unicode (NUL,
astral characters; lone surrogates must be refused) and bytes, JSON objects, batches that mix
kinds, repeated keys, and a child process that SIGKILLs itself between batches. Each example
opens its own database file, so examples never see each other's data.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from graceful.exceptions import StateError
from graceful.state import MAX_KEY_BYTES, MAX_VALUE_BYTES, DurableStore, Value
from tests.test_state import hold_writer

HANG_GUARD = 20.0
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

T = TypeVar("T")

keys = st.text(max_size=24)  # hypothesis text includes NUL and astral characters
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ),
    max_size=4,
)
values: st.SearchStrategy[Value] = (
    st.none() | st.text(max_size=40) | st.binary(max_size=40) | json_objects
)
surrogates = st.characters(categories=["Cs"])
with_a_surrogate = st.tuples(st.text(max_size=6), surrogates, st.text(max_size=6)).map("".join)


@asynccontextmanager
async def opened(path: Path | str, **options: Any) -> AsyncIterator[DurableStore]:
    """A store open for the block; open and close spelled out (``async with store`` has its
    own test in test_state.py, and these must fail for their own reasons on older code)."""
    store = DurableStore(path, registry=None, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def run(tmp: Path, scenario: Callable[[DurableStore], Awaitable[T]]) -> T:
    """Run ``scenario`` against a store on a new file in ``tmp`` (one per example)."""
    path = tmp / f"store-{next(_files)}.db"

    async def main() -> T:
        async with asyncio.timeout(HANG_GUARD), opened(path) as store:
            return await scenario(store)

    return asyncio.run(main())


_files = itertools.count()


async def in_one_batch(store: DurableStore, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Queue ``calls`` while the writer is held, so they share one transaction."""
    release, parked = await hold_writer(store)
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0)
    release.set()
    await parked
    return await asyncio.gather(*tasks, return_exceptions=True)


def exactly(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, b"" is not "")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(exactly(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(exactly(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]
    return a == b


# -- round trips -------------------------------------------------------------------------------


@PROPERTY
@given(items=st.lists(st.tuples(keys, values), max_size=16))
@example(items=[("a\x00b", "x\x00y"), ("a", "z")])  # issue 9 item 1: NUL cut on the JSON path
@example(items=[("a\x00b", "x\x00y"), ("a", b"bytes switch paths")])
@example(items=[("\x00", {"\x00": "\x00"}), ("", None), ("\U0001f600", "\U0001f600")])
def test_one_batch_stores_every_value_exactly(
    tmp_path: Path, items: list[tuple[str, Value]]
) -> None:
    """Puts sharing one transaction: each key's first value comes back exactly.

    Result: put answers True for the first occurrence of a key and False for a repeat;
    get returns the first value, of the same type; keys() lists each key once, in order.
    """

    async def scenario(store: DurableStore) -> None:
        answers = await in_one_batch(store, [store.put(k, v) for k, v in items])
        first: dict[str, Value] = {}
        for (key, value), answer in zip(items, answers, strict=True):
            assert answer is (key not in first), (key, answer)
            first.setdefault(key, value)
        for key, value in first.items():
            assert exactly(await store.get(key, default=...), value), key  # type: ignore[arg-type]
        assert await store.keys() == list(first)
        assert await store.count() == len(first)

    run(tmp_path, scenario)


@PROPERTY
@given(
    waves=st.lists(
        st.tuples(keys, values), unique_by=lambda kv: kv[0], min_size=1, max_size=30
    ).flatmap(
        lambda items: st.just(items).map(lambda xs: [xs[i : i + 6] for i in range(0, len(xs), 6)])
    ),
    split=st.integers(0, 6),
)
@example(waves=[[("a\x00b", "x\x00y"), ("a", "z")]], split=0)
@example(waves=[[("a\x00b", "x\x00y"), ("a", "z"), ("b", b"\x00")]], split=1)
def test_concurrent_batches_mixing_kinds_and_put_many(
    tmp_path: Path, waves: list[list[tuple[str, Value]]], split: int
) -> None:
    """Several waves of concurrent puts and put_many calls, bytes and text mixed.

    Result: every key answers new once; after a reopen every value is the one written,
    exactly; a second put of any key answers False and changes nothing.
    """
    path = tmp_path / f"waves-{next(_files)}.db"
    written: dict[str, Value] = {}

    async def main() -> None:
        async with asyncio.timeout(HANG_GUARD):
            async with opened(path) as store:
                for wave in waves:
                    singles, many = wave[:split], wave[split:]
                    calls: list[Awaitable[Any]] = [store.put(k, v) for k, v in singles]
                    calls.append(store.put_many(many))
                    assert await asyncio.gather(*calls) == [True] * len(singles) + [len(many)]
                    written.update(wave)
            async with opened(path) as again:
                for key, value in written.items():
                    assert exactly(await again.get(key, default=...), value)  # type: ignore[arg-type]
                    assert await again.put(key, "another value") is False
                    assert exactly(await again.get(key, default=...), value)  # type: ignore[arg-type]
                assert await again.keys() == list(written)

    asyncio.run(main())


# -- refused, never changed --------------------------------------------------------------------


@PROPERTY
@given(
    bad=st.one_of(
        st.tuples(with_a_surrogate, values),
        st.tuples(keys, with_a_surrogate),
        st.tuples(keys, st.dictionaries(st.just("s"), with_a_surrogate, min_size=1)),
    ),
    good=st.lists(st.tuples(keys, st.text(max_size=8)), max_size=4, unique_by=lambda kv: kv[0]),
)
def test_lone_surrogates_are_refused_and_nothing_else_fails(
    tmp_path: Path, bad: tuple[str, Value], good: list[tuple[str, str]]
) -> None:
    """A lone surrogate cannot be stored as UTF-8: ValueError naming it; neighbours commit."""

    async def scenario(store: DurableStore) -> None:
        answers = await in_one_batch(store, [store.put(*bad), *(store.put(*kv) for kv in good)])
        assert isinstance(answers[0], ValueError), answers
        assert "surrogate" in str(answers[0])
        assert answers[1:] == [True] * len(good)
        assert await store.keys() == [k for k, _ in good]

    run(tmp_path, scenario)


def circular() -> dict[str, Any]:
    value: dict[str, Any] = {"list": []}
    value["list"].append(value)
    return value


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        (b"bytes key", "v", TypeError, "key must be str, not bytes"),
        (7, "v", TypeError, "key must be str, not int"),
        (None, "v", TypeError, "key must be str, not NoneType"),
        ("k", 3, TypeError, "not int"),
        ("k", ["a", "list"], TypeError, "not list"),
        ("k", {1: "int key"}, TypeError, "key 1 in value is not a str"),
        ("k", {"1": "a", 1: "b"}, TypeError, "is not a str"),
        ("k", {"t": (1, 2)}, TypeError, "value['t'] is a tuple"),
        ("k", {"s": {1, 2}}, TypeError, "not JSON serializable"),
        ("k", {"f": float("nan")}, ValueError, "cannot be stored as JSON"),
        ("k", {"f": float("inf")}, ValueError, "cannot be stored as JSON"),
        ("k", {"obj": object()}, TypeError, "not JSON serializable"),
        ("k", circular(), ValueError, "Circular reference detected"),
    ],
)
async def test_what_would_change_is_refused(
    tmp_path: Path, key: object, value: object, error: type[Exception], message: str
) -> None:
    """Values JSON (or SQLite) would silently change are refused; nothing is stored."""
    async with opened(tmp_path / "state.db") as store:
        with pytest.raises(error, match=re.escape(message)):
            await store.put(key, value)  # type: ignore[arg-type]
        with pytest.raises(error, match=re.escape(message)):
            await store.put_many([("ok", None), (key, value)])  # type: ignore[list-item]
        assert await store.count() == 0


async def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"d": deep}
    async with opened(tmp_path / "state.db") as store:
        with pytest.raises(ValueError, match="nested too deeply"):
            await store.put("k", deep)
        assert await store.put("k", {"d": {"d": {}}}) is True


async def test_limits_on_keys_and_values(tmp_path: Path) -> None:
    """Keys up to MAX_KEY_BYTES of UTF-8 and values up to MAX_VALUE_BYTES are stored; one
    byte more is refused (ValueError naming the size and the limit), before any write."""
    async with opened(tmp_path / "state.db") as store:
        assert await store.put("k" * MAX_KEY_BYTES) is True
        assert await store.put("\U0001f600" * (MAX_KEY_BYTES // 4)) is True  # 4 bytes each
        with pytest.raises(ValueError, match=f"key is {MAX_KEY_BYTES + 1} bytes"):
            await store.put("k" * (MAX_KEY_BYTES + 1))
        with pytest.raises(ValueError, match=f"key is {MAX_KEY_BYTES + 4} bytes"):
            await store.put("\U0001f600" * (MAX_KEY_BYTES // 4 + 1))
        assert await store.put("text", "é" * (MAX_VALUE_BYTES // 2)) is True
        assert await store.put("bytes", b"\x00" * MAX_VALUE_BYTES) is True
        with pytest.raises(ValueError, match=f"value is {MAX_VALUE_BYTES + 1} bytes"):
            await store.put("big", b"\x00" * (MAX_VALUE_BYTES + 1))
        with pytest.raises(ValueError, match=f"value is {MAX_VALUE_BYTES + 2} bytes"):
            await store.put("big", "é" * (MAX_VALUE_BYTES // 2 + 1))
        with pytest.raises(ValueError, match="over the limit"):
            await store.put("big", {"x": "y" * MAX_VALUE_BYTES})
        assert await store.get("bytes") == b"\x00" * MAX_VALUE_BYTES
        assert await store.get("big", "absent") == "absent"
    async with opened(tmp_path / "small.db", max_key_bytes=4, max_value_bytes=2) as small:
        assert await small.put("abcd", "xy") is True
        with pytest.raises(ValueError, match="key is 5 bytes"):
            await small.put("abcde")
        with pytest.raises(ValueError, match="value is 3 bytes"):
            await small.put("k", "xyz")
    with pytest.raises(ValueError, match="max_value_bytes"):
        DurableStore(tmp_path / "x.db", max_value_bytes=0)


async def test_an_oversized_item_fails_alone_before_joining_a_batch(tmp_path: Path) -> None:
    """Issue 9 item 11: one oversized item must not fail the other writes of its batch.

    Result: the oversized put raises ValueError at once (it never reaches the writer thread,
    which is held); the puts around it are committed.
    """
    async with opened(tmp_path / "state.db") as store:
        release, parked = await hold_writer(store)
        before = asyncio.ensure_future(store.put("before", "ok"))
        with pytest.raises(ValueError, match="over the limit"):
            await store.put("huge", "x" * (MAX_VALUE_BYTES + 1))
        after = asyncio.ensure_future(store.put("after", "ok"))
        await asyncio.sleep(0)
        release.set()
        await parked
        assert await asyncio.gather(before, after) == [True, True]
        assert await store.keys() == ["before", "after"]


async def test_reads_refuse_what_no_write_accepts(tmp_path: Path) -> None:
    async with opened(tmp_path / "state.db") as store:
        with pytest.raises(TypeError, match="key must be str"):
            await store.get(b"k")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="surrogate"):
            await store.get("\ud800")
        with pytest.raises(ValueError, match="surrogate"):
            await store.keys(after="\udfff")
        assert await store.get("k" * (MAX_KEY_BYTES + 1), "absent") == "absent"


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["per%41cent", "per%%cent", "what?mode=ro#frag", "with space", "ünïcødé-é", "file:x", "a&b=c"],
)
async def test_paths_with_uri_characters_work_on_every_start(tmp_path: Path, name: str) -> None:
    """Issue 9 item 2: "%", "?", "#", spaces and non-ASCII in the path, first boot and restart.

    1. Open a new file in a directory of that name, write, close.
    2. Open it again (the check on an existing file reads it through a URI), then a second
       store on the same file while the first is open (the check then sees a -wal file).
    Result: the data comes back each time; no file is created anywhere else.
    """
    directory = tmp_path / name
    directory.mkdir()
    path = directory / f"{name}.db"
    async with asyncio.timeout(HANG_GUARD):
        async with opened(path) as store:
            assert await store.put("k", name) is True
        async with opened(path) as store:
            assert await store.get("k") == name
            assert await store.put("k2") is True
            async with opened(path) as second:
                assert await second.get("k") == name
                assert await second.keys() == ["k", "k2"]
    assert os.listdir(tmp_path) == [name]
    assert os.listdir(directory) == [f"{name}.db"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a\x00b.db", "the path contains a NUL character"),
        ("dir\x00/state.db", "the path contains a NUL character"),
        ("bad\ud800.db", "cannot open"),
    ],
)
async def test_an_unusable_path_is_a_clear_error(tmp_path: Path, path: str, message: str) -> None:
    """Issue 9 item 2: an exception while opening reaches open() as a StateError.

    A NUL cannot be in a file name; a lone surrogate cannot be encoded for the file system
    (the open raises UnicodeEncodeError inside the writer thread). Result: StateError naming
    the path, without waiting; the store can be opened on a good path afterwards.
    """
    store = DurableStore(str(tmp_path / path), registry=None)
    with pytest.raises(StateError, match=message) as info:
        async with asyncio.timeout(HANG_GUARD):
            await store.open()
    assert "state store" in str(info.value)
    assert not store.is_open
    assert os.listdir(tmp_path) == []


async def test_a_dying_writer_thread_fails_every_caller(tmp_path: Path) -> None:
    """Issue 9 item 2: whatever kills the writer thread, no put, read or close hangs.

    1. The writer thread is parked in a call that then raises SystemExit (as a bug or an
       interpreter shutdown would), with puts queued behind it.
    2. More puts after it died; then close.
    Result: every queued put and the call raise StateError ("writer thread failed"); later
    puts raise at once; close raises it too and leaves the store closed; the store opens
    again on the same file with the data committed before the failure.
    """
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=None)
    await store.open()
    await store.put("before")
    entered, release = threading.Event(), threading.Event()

    def die(_conn: object) -> None:
        entered.set()
        release.wait(HANG_GUARD)
        raise SystemExit("killed inside the writer thread")

    async with asyncio.timeout(HANG_GUARD):
        dying = asyncio.ensure_future(store._submit(die))
        await asyncio.to_thread(entered.wait, HANG_GUARD)
        queued = [asyncio.ensure_future(store.put(f"k{i}")) for i in range(5)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(dying, *queued, return_exceptions=True)
        for result in results:
            assert isinstance(result, StateError), results
            assert "writer thread failed" in str(result)
            assert "SystemExit" in str(result)
        assert not store.is_open
        with pytest.raises(StateError, match="writer thread failed"):
            await store.put("later")
        with pytest.raises(StateError, match="writer thread failed"):
            await store.close()
        await store.close()  # closed now: nothing left to do
        async with opened(path) as again:
            assert await again.keys() == ["before"]


# -- crash between batches ---------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, os, pickle, signal, sys
    from graceful.state import DurableStore

    async def main():
        waves, kill_after = pickle.loads(sys.stdin.buffer.read())
        store = DurableStore(sys.argv[1], registry=None)
        await store.open()
        acked = 0
        for wave in waves:
            tasks = [asyncio.ensure_future(store.put(k, v)) for k, v in wave]
            if acked >= kill_after:
                await asyncio.sleep(0)  # the wave is queued (in flight) at the kill
                os.kill(os.getpid(), signal.SIGKILL)
            for i, new in enumerate(await asyncio.gather(*tasks)):
                print("ACK", repr(wave[i][0]), new, flush=True)
                acked += 1
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    waves=st.lists(st.lists(st.tuples(keys, values), min_size=1, max_size=8), max_size=6),
    kill_after=st.integers(0, 30),
)
@example(waves=[[("a\x00b", "x\x00y"), ("a", "z")], [("c", "\x00")]], kill_after=2)
def test_acknowledged_writes_survive_sigkill_between_batches(
    tmp_path_factory: pytest.TempPathFactory,
    waves: list[list[tuple[str, Value]]],
    kill_after: int,
) -> None:
    """A child process writes waves of concurrent puts and SIGKILLs itself after some acks.

    Result: after a reopen, every acknowledged key holds exactly its first written value,
    and nothing is stored that was not written.
    """
    path = tmp_path_factory.mktemp("crash") / "state.db"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        input=pickle.dumps((waves, kill_after)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    acked = [
        line.split(" ", 1)[1]
        for line in done.stdout.decode().splitlines()
        if line.startswith("ACK ")
    ]
    first: dict[str, Value] = {}
    for key, value in itertools.chain.from_iterable(waves):
        first.setdefault(key, value)

    async def check() -> None:
        async with asyncio.timeout(HANG_GUARD), opened(path) as store:
            stored = set(await store.keys())
            assert stored <= set(first)
            for line in acked:
                key_repr, _, _ = line.rpartition(" ")
                key = ast.literal_eval(key_repr)
                assert key in stored
                assert exactly(await store.get(key), first[key])

    assert os.path.exists(path)
    asyncio.run(check())

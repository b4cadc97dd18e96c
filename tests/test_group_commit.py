"""Group commit against a serial model: whatever the batches, each write gets the answer it
would get if the writes ran one at a time, in the order they were made.

Real SQLite files, real writer threads. Hypothesis draws the writes (random keys, repeated
keys, keys already stored, atomic ``put_many`` groups, odd values), how they are batched
(all queued behind a parked writer, or as they come; ``max_batch``) and SQLite's limit on
bound parameters (a low one splits a transaction into several statements, and the read-back
of which keys were new into several queries).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

import graceful.state.values as values_module
import graceful.state.writer as writer_module
from graceful.exceptions import StateError
from graceful.state import DurableStore, Value

HANG_GUARD = 10.0

# A small pool of keys, so that writes repeat each other's keys often.
KEYS = st.sampled_from([f"k{i}" for i in range(12)] + ["", "k\x00nul", "ключ", "k 1"])
TEXT = st.text(st.characters(codec="utf-8"), max_size=8)  # no lone surrogates
VALUES: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    TEXT,
    st.binary(max_size=8),
    st.dictionaries(TEXT, st.integers(-(2**53), 2**53) | TEXT | st.booleans(), max_size=3),
)


@dataclass(frozen=True)
class Put:
    key: str
    value: Value


@dataclass(frozen=True)
class PutMany:
    items: tuple[tuple[str, Value], ...]


OPS = st.lists(
    st.one_of(
        st.builds(Put, KEYS | TEXT, VALUES),
        st.builds(PutMany, st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=5).map(tuple)),
    ),
    min_size=1,
    max_size=300,
)


@dataclass(frozen=True)
class Scenario:
    stored: tuple[tuple[str, Value], ...]  # written, one at a time, before the concurrent writes
    ops: tuple[Put | PutMany, ...]
    parked: bool  # queue every write behind a parked writer: one batch (up to max_batch)
    max_batch: int
    variable_limit: int | None  # SQLITE_LIMIT_VARIABLE_NUMBER on the writer's connection
    uvloop: bool


SCENARIOS = st.builds(
    Scenario,
    stored=st.lists(st.tuples(KEYS, VALUES), max_size=6).map(tuple),
    ops=OPS.map(tuple),
    parked=st.booleans(),
    max_batch=st.sampled_from([1, 3, 64, 4096]),
    variable_limit=st.sampled_from([None, 16, 40]),
    uvloop=st.booleans(),
)


def model(scenario: Scenario) -> tuple[list[object], dict[str, Value]]:
    """What each write answers, and what is stored, when the writes run one at a time."""
    stored: dict[str, Value] = {}
    for key, value in scenario.stored:
        stored.setdefault(key, value)
    answers: list[object] = []
    for op in scenario.ops:
        if isinstance(op, Put):
            answers.append(op.key not in stored)
            stored.setdefault(op.key, op.value)
        else:
            new = {key for key, _ in op.items if key not in stored}
            answers.append(len(new))
            for key, value in op.items:
                stored.setdefault(key, value)
    return answers, stored


async def park(store: DurableStore) -> tuple[threading.Event, asyncio.Future[object]]:
    """Park the writer thread in a queued call until the event is set (reaches into the
    store's queue on purpose: the one way to be sure every later write is queued)."""
    entered, release = threading.Event(), threading.Event()

    def parked_call(_conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(HANG_GUARD)

    parked = asyncio.ensure_future(store._submit(parked_call))
    await asyncio.to_thread(entered.wait, HANG_GUARD)
    return release, parked


async def observe(scenario: Scenario, directory: str) -> tuple[list[object], dict[str, Value]]:
    """Run the scenario on a real store: each write's answer, and what is stored after."""
    store = DurableStore(
        os.path.join(directory, "state.db"), registry=None, max_batch=scenario.max_batch
    )
    async with store:
        for key, value in scenario.stored:
            await store.put(key, value)
        limit = scenario.variable_limit
        if limit is not None:
            await store._submit(
                lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
            )
        release = parked = None
        if scenario.parked:
            release, parked = await park(store)
        calls: list[Awaitable[Any]] = []
        for op in scenario.ops:
            if isinstance(op, Put):
                calls.append(store.put(op.key, op.value))
            else:
                calls.append(store.put_many(op.items))
        # Tasks start in the order they were made, and each queues its write before it
        # first waits: the queue holds the writes in the order of `ops`.
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)
        async with asyncio.timeout(HANG_GUARD):
            if release is not None and parked is not None:
                release.set()
                await parked
            answers = list(await asyncio.gather(*tasks))
            keys = await store.keys()
            stored = {key: await store.get(key) for key in keys}
            assert await store.count() == len(keys)
    return answers, stored


def check(scenario: Scenario) -> None:
    """The store's answers, stored values and key order are the serial model's."""
    expected_answers, expected = model(scenario)
    factory = uvloop.new_event_loop if scenario.uvloop else asyncio.new_event_loop
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner(loop_factory=factory) as runner:
        answers, stored = runner.run(observe(scenario, tmp))
    assert answers == expected_answers
    assert stored == expected
    assert list(stored) == list(expected)  # keys() in the order they were first written


@settings(max_examples=60, deadline=None)
@given(SCENARIOS)
def test_concurrent_writes_get_the_answers_of_the_serial_model(scenario: Scenario) -> None:
    check(scenario)


# The control: a writer that acknowledges every row as new (the shortcut taken when every row
# of a transaction was inserted, taken always) fails the same check.
DUPLICATES = Scenario(
    stored=(("k0", "old"),),
    ops=(Put("k0", "again"), Put("k1", "a"), Put("k1", "b"), PutMany((("k2", None),))),
    parked=True,
    max_batch=4096,
    variable_limit=None,
    uvloop=False,
)


def test_the_check_catches_a_writer_that_acks_a_stored_key_as_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check(DUPLICATES)  # the real writer passes
    real: Callable[[sqlite3.Connection, list[Any], int], list[bool]] = writer_module._insert

    def everything_new(conn: sqlite3.Connection, rows: list[Any], tag: int) -> list[bool]:
        real(conn, rows, tag)
        return [True] * len(rows)

    monkeypatch.setattr(writer_module, "_insert", everything_new)
    with pytest.raises(AssertionError):
        check(DUPLICATES)


@pytest.mark.parametrize("size", [1, 4, 5, 7, 8, 9, 100, 129, 4095, 4096, 4097, 10_000])
def test_statement_sizes_cover_the_rows_with_little_padding(size: int) -> None:
    padded = writer_module._statement_size(size)
    assert size <= padded <= max(size, size * 5 // 4 + 1)


def test_few_statement_sizes_serve_every_batch() -> None:
    sizes = {writer_module._statement_size(n) for n in range(1, 4097)}
    assert len(sizes) <= 52  # within sqlite3's default statement cache (128), with room


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, JSON, max_size=4))
def test_the_faster_json_encoding_is_the_json_encoders(value: dict[str, Any]) -> None:
    """`put` encodes a mapping with the C encoder directly: the same text as
    ``JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))`` gives."""
    assert values_module._encode_json(value) == values_module._JSON.encode(value)
    assert values_module._FAST_JSON is not None  # the faster path is the one checked


# -- a call queued behind a batch whose file is lost --------------------------------------------


async def test_a_call_queued_behind_a_refused_batch_gets_an_answer(tmp_path: Path) -> None:
    """The writer thread dies refusing a batch (its file was deleted): a call it had already
    taken from the queue, behind the batch, fails too instead of waiting forever."""
    path = tmp_path / "state.db"
    store = DurableStore(path, registry=None)
    await store.open()
    try:
        release, parked = await park(store)
        puts = [asyncio.ensure_future(store.put(f"k{i}")) for i in range(10)]
        call = asyncio.ensure_future(store._submit(lambda conn: "ran"))
        await asyncio.sleep(0)
        path.unlink()
        release.set()
        async with asyncio.timeout(HANG_GUARD):
            await parked
            results = await asyncio.gather(*puts, call, return_exceptions=True)
        assert all(isinstance(r, StateError) and "deleted" in str(r) for r in results), results
    finally:
        with pytest.raises(StateError):
            await store.close()

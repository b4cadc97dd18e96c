"""Durable state: a SQLite store where a write is acknowledged only once it is on disk, and a
batcher that flushes on size, on age and at shutdown.

`DurableStore` keeps one SQLite connection on a dedicated writer thread, so the event loop
never waits on disk. The database runs in WAL mode with ``synchronous=FULL``: every commit
appends to the write-ahead log and fsyncs it before ``put`` returns. Writes that arrive while a
commit is running are queued and committed together by the next transaction (group commit), so
one fsync acknowledges a whole batch of concurrent writers. Reads run on their own read-only
connections in reader threads (WAL lets readers and the writer work at the same time), so a
long read never delays a write.

Every key and value is bound as a SQL parameter, never spliced into SQL or JSON, so what a
``put`` accepts comes back from ``get`` exactly. What the store cannot keep exactly (a lone
surrogate, a key or value over its limit, a mapping that JSON would change) is refused with
`TypeError` or `ValueError` in the caller, before it joins a transaction.

`Batcher` collects items in memory and hands them to an async ``flush`` callable when
``max_items`` are buffered, when the oldest item is ``max_age`` seconds old, and in the
``flush`` phase of a shutdown. A failed flush keeps its items for the next attempt.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import secrets
import sqlite3
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeAlias, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from graceful.exceptions import StateError
from graceful.hooks import Phase
from graceful.logs import get_logger

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["MAX_KEY_BYTES", "MAX_VALUE_BYTES", "Batcher", "DurableStore", "Value"]

#: What a key maps to: a JSON object, text, bytes or nothing.
Value: TypeAlias = Mapping[str, Any] | str | bytes | None

#: Default limit on a key: its UTF-8 encoding, in bytes (1024 ASCII characters, at least 256
#: of any script). Keys are identities, kept in the primary-key index.
MAX_KEY_BYTES: Final = 1024
#: Default limit on a value: text as UTF-8, bytes as they are, a mapping as its compact JSON.
MAX_VALUE_BYTES: Final = 1 << 20

T = TypeVar("T")

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
# Written into the database header so a SQLite file of another application is never mistaken
# for ours (and never gets our table added to it). ASCII "grcf".
_APPLICATION_ID: Final = 0x67726366
_TABLE: Final = "graceful_items"
_KIND_NULL, _KIND_TEXT, _KIND_BYTES, _KIND_JSON = 0, 1, 2, 3
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# SQLite's own ceiling on a string or blob (SQLITE_MAX_LENGTH as shipped): a limit above it
# could accept a write that SQLite then refuses.
_SQLITE_MAX_LENGTH: Final = 1_000_000_000
# Reads run on this many threads, each with its own read-only connection.
_READERS: Final = 2
# Rows per INSERT statement: bounds the SQL text and its compile time (a batch larger than
# this, from a large put_many, takes several statements in one explicit transaction).
_MAX_ROWS_PER_STATEMENT: Final = 4096

Row: TypeAlias = tuple[str, int, str | bytes | None]

# Compact, UTF-8 as is (its size is the stored size), no NaN or infinity (not JSON). Built
# once: json.dumps with options builds a new encoder on every call.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# Types that JSON gives back as they were (exact types: a subclass may encode differently).
_PLAIN_JSON: Final = frozenset({str, int, float, bool, type(None)})


# -- what the store accepts --------------------------------------------------------------------


def _utf8_size(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; a lone surrogate cannot be stored and is refused."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} contains a lone surrogate ({text[exc.start]!r} at index {exc.start}): "
            "not valid Unicode text, so it cannot be stored as UTF-8"
        ) from None


def _check_key(key: object, limit: int | None) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    size = _utf8_size(key, "key")
    if limit is not None and size > limit:
        raise ValueError(f"key is {size} bytes in UTF-8, over the limit of {limit} bytes")
    return key


def _encode(key: object, value: object, *, max_key: int, max_value: int) -> Row:
    """The row for ``key`` and ``value``, or an error if they cannot come back exactly."""
    key = _check_key(key, max_key)
    kind: int
    raw: str | bytes | None
    if value is None:
        return (key, _KIND_NULL, None)
    if isinstance(value, str):
        kind, raw, size = _KIND_TEXT, str(value), _utf8_size(value, "text value")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        kind, size = _KIND_BYTES, len(raw)
    elif isinstance(value, Mapping):
        kind, raw = _KIND_JSON, _to_json(value)
        size = _utf8_size(raw, "value")
    else:
        raise TypeError(f"value must be a Mapping, str, bytes or None, not {type(value).__name__}")
    if size > max_value:
        raise ValueError(f"value is {size} bytes, over the limit of {max_value} bytes")
    return (key, kind, raw)


def _to_json(value: Mapping[Any, Any]) -> str:
    obj = dict(value)
    try:
        text = _JSON.encode(obj)
    except RecursionError:
        raise ValueError("value is nested too deeply to be stored as JSON") from None
    except ValueError as exc:  # NaN or infinity, which JSON does not have
        raise ValueError(f"value cannot be stored as JSON: {exc}") from None
    except TypeError as exc:  # a set, an object, a key of an odd type
        raise TypeError(f"value cannot be stored as JSON: {exc}") from None
    # json.dumps turns non-str keys into strings and tuples into lists without a word; such a
    # value would come back different from what was put. A flat object of plain values (the
    # common case) cannot change; anything else is decoded again and compared.
    if not _flat_and_plain(obj) and json.loads(text) != obj:
        raise TypeError(f"value would not come back unchanged from JSON: {_json_change(obj)}")
    return text


def _flat_and_plain(obj: dict[Any, Any]) -> bool:
    for key, item in obj.items():
        if type(key) is not str or type(item) not in _PLAIN_JSON:
            return False
    return True


def _json_change(value: object, where: str = "value") -> str:
    """Why ``value`` changes on its way through JSON (only called once it is known to)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r} in {where} is not a str"
            found = _json_change(item, f"{where}[{key!r}]")
            if found:
                return found
    elif isinstance(value, tuple):
        return f"{where} is a tuple (JSON has only lists)"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _json_change(item, f"{where}[{i}]")
            if found:
                return found
    return ""


def _decode(kind: int, raw: str | bytes | None) -> Value:
    if kind == _KIND_JSON:
        loaded: dict[str, Any] = json.loads(raw if raw is not None else "null")
        return loaded
    if kind == _KIND_BYTES:
        return raw if isinstance(raw, bytes) else b""
    return raw


# -- the jobs the threads run ------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    """Rows that must commit in the same transaction, and the caller waiting for them."""

    rows: list[Row]
    future: asyncio.Future[list[bool]]


@dataclass(slots=True)
class _Call:
    """A function run on a connection's thread, in queue order; ``last`` closes the thread."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    last: bool = False


Outcome: TypeAlias = tuple[asyncio.Future[Any], object]


def _settle(loop: asyncio.AbstractEventLoop | None, outcomes: list[Outcome]) -> None:
    """Resolve futures on their loop, from a thread; one wake-up for the whole list."""
    if loop is None or not outcomes:
        return
    try:
        loop.call_soon_threadsafe(_resolve_all, outcomes)
    except RuntimeError:
        # The loop was closed under us (the process is exiting): nobody is waiting.
        pass


def _resolve_all(outcomes: list[Outcome]) -> None:
    for future, outcome in outcomes:
        if future.done():  # the caller was cancelled (the write itself stands), or settled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _call(job: _Call, conn: sqlite3.Connection, path: str) -> Outcome:
    try:
        return (job.future, job.fn(conn))
    except Exception as exc:
        return (job.future, _state_error(path, "close failed" if job.last else "read failed", exc))


@dataclass(slots=True)
class _StoreMetrics:
    commits: Counter
    failures: Counter
    items: Counter
    batch_size: Histogram


def _make_metrics(registry: CollectorRegistry | None) -> _StoreMetrics:
    # registry=None keeps the metrics private (a throwaway registry), for a second store in
    # one process or for code that does not export metrics at all.
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    return _StoreMetrics(
        commits=Counter(
            "graceful_state_commits_total",
            "Transactions committed (and fsynced) by the durable store.",
            registry=reg,
        ),
        failures=Counter(
            "graceful_state_commit_failures_total",
            "Transactions that failed; every write in them failed too.",
            registry=reg,
        ),
        items=Counter(
            "graceful_state_items_written_total",
            "New keys written by committed transactions (repeated keys are not counted).",
            registry=reg,
        ),
        batch_size=Histogram(
            "graceful_state_batch_size",
            "Writes per committed transaction.",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        ),
    )


class _Readers:
    """Threads that run reads, each on its own read-only connection, beside the writer."""

    def __init__(
        self, conns: list[sqlite3.Connection], path: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._path = path
        self._loop = loop
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._run, args=(conn,), name=f"graceful-state-read:{path}", daemon=True
            )
            for conn in conns
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Call(fn, future, last))
        return future

    async def close(self) -> None:
        """Let the reads already queued finish, then close every reader's connection."""
        # Each thread takes exactly one `last` call and ends with it.
        closing = [self.submit(_close_connection, last=True) for _ in self._threads]
        results = await asyncio.gather(*closing, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _run(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self._queue.get()
            try:
                outcome = _call(job, conn, self._path)
            except BaseException as exc:  # a reader must answer every caller, whatever happens
                outcome = (job.future, _state_error(self._path, "read failed", exc))
            _settle(self._loop, [outcome])
            if job.last:
                return


class DurableStore:
    """A key-value store on SQLite where ``put`` returns only once the write is durable.

    Keys are strings; a key is stored once (``put`` is idempotent), so a client that retries
    after a lost acknowledgement never creates a duplicate. Values are JSON objects, text,
    bytes or ``None``, and come back from `get` exactly as they went in (NUL characters and
    all). What cannot come back exactly is refused before it is written: see ``put``.

    All calls must come from the event loop that opened the store. ``async with store:``
    opens and closes it.

    Durability: the database is in WAL mode with ``synchronous=FULL``, so each commit fsyncs
    the log before any writer in it is acknowledged. An acknowledged write survives SIGKILL
    (``docker kill``), a crash of the process and, on a disk that honours fsync, power loss.

    Args:
        path: the database file. Its directory must exist and be writable (SQLite keeps the
            ``-wal`` and ``-shm`` files beside it). Any characters but NUL.
        registry: where the metrics are registered; ``None`` keeps them private.
        max_batch: most writes committed by one transaction; ``1`` turns group commit off
            (one transaction and one fsync per write), for comparison.
        busy_timeout: seconds a transaction waits for a lock held by another process before
            failing.
        check: run ``PRAGMA quick_check`` on open (time grows with the file's size).
        max_key_bytes: longest key, in bytes of UTF-8.
        max_value_bytes: largest value, in bytes (text as UTF-8, a mapping as compact JSON).

    Example:
        ```python
        async with DurableStore("/data/state.db") as store:
            if await store.put("order-17", {"total": 12}):
                print("new")
        ```

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        registry: CollectorRegistry | None = REGISTRY,
        max_batch: int = 4096,
        busy_timeout: float = 5.0,
        check: bool = True,
        max_key_bytes: int = MAX_KEY_BYTES,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be str or os.PathLike[str], not {type(path).__name__}")
        if not path:
            raise ValueError("path must not be empty")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must not be negative, not {busy_timeout}")
        for name, limit in (("max_key_bytes", max_key_bytes), ("max_value_bytes", max_value_bytes)):
            if not 1 <= limit <= _SQLITE_MAX_LENGTH:
                raise ValueError(f"{name} must be from 1 to {_SQLITE_MAX_LENGTH}, not {limit}")
        self.path = path
        self.max_batch = max_batch
        self.busy_timeout = busy_timeout
        self.check = check
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self._metrics = _make_metrics(registry)
        self._log = get_logger()
        self._queue: queue.SimpleQueue[_Write | _Call] = queue.SimpleQueue()
        # Held while a job is queued and while a dying writer thread empties the queue, so no
        # job can slip in after the last one was failed.
        self._queue_lock = threading.Lock()
        self._failure: StateError | None = None
        self._thread: threading.Thread | None = None
        self._readers: _Readers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the store accepts reads and writes."""
        return self._accepting and self._failure is None

    async def open(self) -> None:
        """Open (or create) the database and check it.

        Nothing is written to a file that fails a check: the store refuses it and leaves it as
        it is.

        Raises:
            StateError: the path is unusable (contains NUL, directory missing or not
                writable), the file is read-only, is not a SQLite database, is corrupt or
                belongs to another application, or the disk is full; any other failure to
                open is a `StateError` too. The message names the path and the reason.
        """
        if self._thread is not None:
            raise StateError(f"state store {self.path}: already open")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[list[sqlite3.Connection]] = loop.create_future()
        self._loop = loop
        # A fresh queue per opening: nothing left from an earlier one can reach this thread.
        self._queue = queue.SimpleQueue()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"graceful-state:{self.path}", daemon=True
        )
        self._thread.start()
        try:
            read_conns = await opened
        except BaseException as exc:
            self._thread = None
            if not isinstance(exc, StateError):
                # Cancelled while opening: close the connections the thread may still open.
                self._queue.put(_Call(_close_connection, loop.create_future(), last=True))
            raise
        self._readers = _Readers(read_conns, self.path, loop)
        self._accepting = True
        self._log.info("state.opened", path=self.path)

    async def close(self) -> None:
        """Commit what is queued, then close the database.

        Writes submitted before ``close`` are committed (or fail) first, and reads submitted
        before it finish; calls made after it raise `StateError`. Closing a store that is not
        open does nothing.

        Raises:
            StateError: closing failed, or the writer thread had failed (the committed data
                is still safe in the WAL).
        """
        if not self._accepting:
            return
        self._accepting = False
        readers, self._readers = self._readers, None
        try:
            if readers is not None:
                # Readers first: the last connection to close checkpoints the log.
                await readers.close()
        finally:
            try:
                await self._submit(_close_connection, last=True)
            finally:
                self._thread = None
        self._log.info("state.closed", path=self.path)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def attach(self, runtime: Runtime) -> None:
        """Open the store at startup and close it in the ``close`` phase of a shutdown.

        Call before ``runtime.serve()``: startup steps registered later do not run. From
        ``main`` (which runs after startup), call ``await store.open()`` and register
        ``store.close`` as a ``close`` hook instead.

        Args:
            runtime: the runtime whose lifecycle the store follows.
        """
        runtime.on_startup(self.open)
        runtime.on_shutdown(phase=Phase.CLOSE, name=f"state.close:{self.path}")(self.close)

    # -- writes ----------------------------------------------------------------------------

    async def put(self, key: str, value: Value = None) -> bool:
        """Store ``value`` under ``key``, returning once the write is committed and fsynced.

        Idempotent: if ``key`` is already stored, nothing changes (the first value stays).
        Concurrent calls share one transaction. If that transaction fails because of one
        write, the others are committed without it and only that write raises; if it fails
        because of the file (disk full, I/O error, lock), every write in it raises and none
        is stored.

        Args:
            key: the item's identity, usually chosen by the client: any text of at most
                ``max_key_bytes`` in UTF-8.
            value: a JSON object, text, bytes or ``None``, of at most ``max_value_bytes``.

        Returns:
            ``True`` if the key was new, ``False`` if it was already stored.

        Raises:
            StateError: the store is not open or the transaction failed (disk full, I/O
                error, lock held too long by another process).
            TypeError: the key or value has an unsupported type, or a mapping that JSON
                would change (a non-str key, a tuple).
            ValueError: the key or value is over its limit, contains a lone surrogate (not
                valid Unicode), or a mapping holds NaN or infinity. Raised before the write
                joins a transaction, so no other write is affected.
        """
        (new,) = await self._write([self._row(key, value)])
        return new

    async def put_many(self, items: Iterable[tuple[str, Value]] | Mapping[str, Value]) -> int:
        """Store several items atomically: all commit in one transaction, or none does.

        Args:
            items: ``(key, value)`` pairs, or a mapping of keys to values.

        Returns:
            How many of the keys were new.

        Raises:
            StateError: the store is not open or the transaction failed.
            TypeError: a key or value has an unsupported type (see `put`); nothing is written.
            ValueError: a key or value is refused (see `put`); nothing is written.
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [self._row(key, value) for key, value in pairs]
        if not rows:
            return 0
        return sum(await self._write(rows))

    def _row(self, key: object, value: object) -> Row:
        return _encode(key, value, max_key=self.max_key_bytes, max_value=self.max_value_bytes)

    async def _write(self, rows: list[Row]) -> list[bool]:
        future: asyncio.Future[list[bool]] = self._running_loop().create_future()
        self._enqueue(_Write(rows, future))
        return await future

    # -- reads -----------------------------------------------------------------------------

    async def keys(self, *, limit: int | None = None, after: str | None = None) -> list[str]:
        """Stored keys in the order they were first written; one page of them with ``limit``.

        Runs on a reader thread, beside the writer: a long listing delays no write. For a
        large store, read it page by page: pass the last key of a page as ``after`` to get
        the next one; an empty page is the end.

        Args:
            limit: at most this many keys; ``None`` for all of them.
            after: start after this key (the last of the previous page); ``None`` starts at
                the first key.

        Returns:
            The keys, oldest first.

        Raises:
            KeyError: ``after`` is not a stored key.
            ValueError: ``limit`` is negative.
            StateError: the store is not open or the read failed.
        """
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
            if limit < 0:
                raise ValueError(f"limit must not be negative, not {limit}")
        if after is not None:
            _check_key(after, None)

        def read(conn: sqlite3.Connection) -> list[tuple[str]] | None:
            start = 0
            if after is not None:
                found = conn.execute(f"SELECT rowid FROM {_TABLE} WHERE key = ?", (after,))
                row = found.fetchone()
                if row is None:
                    return None
                start = row[0]
            rows: list[tuple[str]] = conn.execute(
                f"SELECT key FROM {_TABLE} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (start, -1 if limit is None else limit),
            ).fetchall()
            return rows

        rows = await self._read(read)
        if rows is None:
            raise KeyError(after)
        return [key for (key,) in rows]

    async def get(self, key: str, default: Value = None) -> Value:
        """The value stored under ``key``, or ``default`` when the key is not stored.

        Raises:
            TypeError: ``key`` is not a str.
            ValueError: ``key`` contains a lone surrogate (it can never be stored).
            StateError: the store is not open or the read failed.
        """
        _check_key(key, None)

        def read(conn: sqlite3.Connection) -> tuple[int, str | bytes | None] | None:
            cur = conn.execute(f"SELECT kind, value FROM {_TABLE} WHERE key = ?", (key,))
            row: tuple[int, str | bytes | None] | None = cur.fetchone()
            return row

        row = await self._read(read)
        return default if row is None else _decode(*row)

    async def count(self) -> int:
        """How many keys are stored."""
        (n,) = await self._read(
            lambda conn: conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
        )
        return int(n)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        readers = self._readers
        if not self._accepting or readers is None:
            raise StateError(f"state store {self.path}: not open")
        return await readers.submit(fn)

    # -- the writer thread -----------------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False) -> Any:
        """Run ``fn`` on the writer thread, in queue order (the close, and tests)."""
        future: asyncio.Future[Any] = self._running_loop(closing=last).create_future()
        self._enqueue(_Call(fn, future, last))
        return await future

    def _running_loop(self, *, closing: bool = False) -> asyncio.AbstractEventLoop:
        if not (self._accepting or closing) or self._loop is None:
            raise StateError(f"state store {self.path}: not open")
        return self._loop

    def _enqueue(self, job: _Write | _Call) -> None:
        with self._queue_lock:
            failure = self._failure
            if failure is None:
                self._queue.put(job)
                return
        raise StateError(str(failure)) from failure.__cause__

    def _run(self, opened: asyncio.Future[list[sqlite3.Connection]]) -> None:
        try:
            conn, readers = _connect_all(self.path, self.busy_timeout, self.check)
        except BaseException as exc:  # open() must get an answer, whatever went wrong
            error = (
                exc if isinstance(exc, StateError) else _state_error(self.path, "cannot open", exc)
            )
            _settle(self._loop, [(opened, error)])
            return
        _settle(self._loop, [(opened, readers)])
        in_hand: list[_Write | _Call] = []
        try:
            self._serve(conn, readers, in_hand)
        except BaseException as exc:  # no caller may wait forever, whatever went wrong
            self._fail_everything(exc, in_hand)
            _close_quietly([*readers, conn])

    def _serve(
        self,
        conn: sqlite3.Connection,
        readers: list[sqlite3.Connection],
        in_hand: list[_Write | _Call],
    ) -> None:
        carry: _Write | _Call | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            in_hand[:] = [job]
            if isinstance(job, _Call):
                if job.last:
                    # Normally closed by their own threads already; not if open() was cancelled.
                    _close_quietly(readers)
                _settle(self._loop, [_call(job, conn, self.path)])
                in_hand.clear()
                if job.last:
                    return
                continue
            batch = [job]
            size = len(job.rows)
            # Group commit: everything queued while the previous transaction was committing
            # goes into this one. A call or close ends the batch and keeps its place in line.
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Call):
                    carry = nxt
                    break
                batch.append(nxt)
                in_hand.append(nxt)
                size += len(nxt.rows)
            _settle(self._loop, self._commit(conn, batch))
            in_hand.clear()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[Outcome]:
        size = sum(len(w.rows) for w in batch)
        try:
            flags = _insert(conn, [row for w in batch for row in w.rows])
        except Exception as exc:
            _rollback(conn)
            if len(batch) > 1 and _caused_by_a_write(exc):
                # One write broke the transaction: commit the halves apart, and so on down to
                # the write at fault, so the others are stored (about 2·log2(n) transactions).
                half = len(batch) // 2
                return self._commit(conn, batch[:half]) + self._commit(conn, batch[half:])
            self._metrics.failures.inc()
            reason = _reason(exc)
            self._log.error("state.commit_failed", path=self.path, writes=size, error=reason)
            return [(w.future, _state_error(self.path, "write failed", exc)) for w in batch]
        self._metrics.commits.inc()
        self._metrics.batch_size.observe(size)
        self._metrics.items.inc(sum(flags))
        outcomes: list[Outcome] = []
        start = 0
        for w in batch:
            outcomes.append((w.future, flags[start : start + len(w.rows)]))
            start += len(w.rows)
        return outcomes

    def _fail_everything(self, exc: BaseException, in_hand: list[_Write | _Call]) -> None:
        """The writer thread is dying: fail every queued call now and every later one."""
        failure = _state_error(self.path, "the writer thread failed", exc)
        with self._queue_lock:
            self._failure = failure
            jobs = list(in_hand)
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        self._log.error("state.writer_failed", path=self.path, error=str(failure))
        _settle(self._loop, [(job.future, StateError(str(failure))) for job in jobs])


# -- SQL ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?)"] * rows)
    return (
        f"INSERT INTO {_TABLE} (key, kind, value, batch) VALUES {values} "
        "ON CONFLICT (key) DO NOTHING"
    )


def _insert(conn: sqlite3.Connection, rows: list[Row]) -> list[bool]:
    """Insert ``rows`` in one transaction; True for each key that was new (first occurrence).

    Every key and value is a bound parameter, so each is stored exactly as it is. The common
    case is one multi-row statement in autocommit mode, that is one transaction and one fsync.
    Few statements matter more than it seems: the sqlite3 module releases and retakes the GIL
    around every statement (and every row of ``executemany``), and while the event loop is
    busy each retake can wait a full switch interval (5 ms).
    """
    # Tag the rows so that, if some keys were already stored, the ones this transaction wrote
    # can be told apart afterwards, without a second statement in the common case.
    tag = secrets.randbits(62)
    per_statement = min(
        _MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4
    )
    chunks = [rows[i : i + per_statement] for i in range(0, len(rows), per_statement)]
    if len(chunks) == 1:
        inserted = _insert_chunk(conn, rows, tag)
    else:
        conn.execute("BEGIN IMMEDIATE")
        inserted = sum(_insert_chunk(conn, chunk, tag) for chunk in chunks)
        conn.execute("COMMIT")
    first: dict[str, int] = {}
    for i, (key, _, _) in enumerate(rows):
        first.setdefault(key, i)
    if inserted == len(first):
        new = set(first.values())
    else:
        # Committed already: should this read fail, the callers get an error for writes
        # that are stored, and a retry answers "already stored". Never the reverse.
        new = _written_by(conn, first, tag, per_statement)
    return [i in new for i in range(len(rows))]


def _insert_chunk(conn: sqlite3.Connection, rows: list[Row], tag: int) -> int:
    # Statement sizes are rounded up to a power of two, padded with copies of the last row
    # (a repeated key inserts nothing), so a handful of compiled statements serve every batch.
    size = 1 << (len(rows) - 1).bit_length()
    params = [field for row in rows for field in (*row, tag)]
    params.extend([*rows[-1], tag] * (size - len(rows)))
    rowcount: int = conn.execute(_insert_sql(size), params).rowcount
    return rowcount


def _written_by(conn: sqlite3.Connection, first: dict[str, int], tag: int, chunk: int) -> set[int]:
    """Positions (of first occurrences) whose row carries ``tag``: the keys that were new.

    Positions are integers, so one aggregated row brings them all back in one step.
    """
    new: set[int] = set()
    items = list(first.items())
    for i in range(0, len(items), chunk):
        part = items[i : i + chunk]
        values = ",".join(["(?,?)"] * len(part))
        sql = (
            f"WITH b(p, k) AS (VALUES {values}) SELECT group_concat(b.p) "
            f"FROM b JOIN {_TABLE} AS t ON t.key = b.k WHERE t.batch = ?"
        )
        params: list[object] = [field for key, pos in part for field in (pos, key)]
        (found,) = conn.execute(sql, [*params, tag]).fetchone()
        if found:
            new.update(int(p) for p in str(found).split(","))
    return new


def _caused_by_a_write(exc: Exception) -> bool:
    """Whether a failure comes from the rows, so other writes can succeed without them.

    A constraint or trigger (IntegrityError) or a value SQLite refuses (DataError) belongs to
    a row; so does an error raised while binding one. Disk full, I/O errors and locks belong
    to the file: splitting the batch would only repeat them.
    """
    if not isinstance(exc, sqlite3.Error):
        return True
    return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)


def _close_connection(conn: sqlite3.Connection) -> None:
    # The last connection to close checkpoints the WAL into the main file and removes it.
    conn.close()


def _close_quietly(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        try:
            conn.close()
        except sqlite3.Error:
            pass


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back (it does on SQLITE_FULL and I/O errors).
            pass


def _reason(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_FULL"):
        return f"disk full ({exc})"
    if name.startswith("SQLITE_READONLY"):
        return f"read-only file or file system ({exc})"
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return f"corrupt or not a SQLite database ({exc})"
    if name.startswith("SQLITE_CANTOPEN"):
        return f"cannot open the file or create its -wal/-shm files ({exc})"
    if name.startswith("SQLITE_BUSY"):
        return f"locked by another connection ({exc})"
    if name:
        return f"{exc} ({name})"
    if isinstance(exc, sqlite3.Error):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _state_error(path: str, what: str, exc: BaseException) -> StateError:
    err = StateError(f"state store {path}: {what}: {_reason(exc)}")
    err.__cause__ = exc
    return err


# -- opening -----------------------------------------------------------------------------------


def _uri(path: str, **query: str) -> str:
    """A ``file:`` URI for ``path``, every special character (``%``, ``?``, ``#``) escaped.

    SQLite (built with ``SQLITE_USE_URI``, as Debian's is) reads even a plain filename that
    starts with ``file:`` as a URI; opening every connection through an escaped URI of the
    absolute path means the name is never read as anything but a name.
    """
    quoted = urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    return f"file:{quoted}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _connect_all(
    path: str, busy_timeout: float, check: bool
) -> tuple[sqlite3.Connection, list[sqlite3.Connection]]:
    """The writer's connection, set up, and the readers' read-only connections."""
    conn = _connect(path, busy_timeout=busy_timeout, check=check)
    readers: list[sqlite3.Connection] = []
    try:
        for _ in range(_READERS):
            reader = sqlite3.connect(
                _uri(path, mode="ro"),
                uri=True,
                isolation_level=None,
                timeout=busy_timeout,
                check_same_thread=False,  # opened here, used and closed by a reader thread
            )
            readers.append(reader)
    except BaseException as exc:
        _close_quietly([*readers, conn])
        if isinstance(exc, sqlite3.Error):
            raise _state_error(path, "cannot open a reader", exc) from exc
        raise
    return conn, readers


def _connect(path: str, *, busy_timeout: float, check: bool) -> sqlite3.Connection:
    """Check the file without writing to it, then open it for writing and set it up."""
    if "\x00" in path:
        raise StateError(f"state store {path!r}: the path contains a NUL character")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StateError(f"state store {path}: directory {directory} does not exist")
    exists = os.path.lexists(path)
    if exists:
        _check_existing(path)
    if not os.access(directory, os.W_OK):
        # WAL mode needs to create the -wal and -shm files next to the database.
        raise StateError(f"state store {path}: directory {directory} is not writable")
    if exists and check and os.path.getsize(path) > 0:
        _quick_check(path)
    try:
        conn = sqlite3.connect(_uri(path), uri=True, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise _state_error(path, "cannot open", exc) from exc
    try:
        _setup(conn, path)
    except BaseException:
        conn.close()
        if not exists:
            _remove_if_empty(path)
        raise
    return conn


def _remove_if_empty(path: str) -> None:
    # A file this open created and could not write to (disk full) is left empty: remove it,
    # so a failed start leaves the directory as it found it. Never a file that existed.
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


def _check_existing(path: str) -> None:
    if not os.path.isfile(path):
        raise StateError(f"state store {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise StateError(f"state store {path}: file is not readable")
    if not os.access(path, os.W_OK):
        raise StateError(f"state store {path}: file is read-only (or on a read-only file system)")
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StateError(f"state store {path}: cannot read: {exc}") from exc
    # An empty file is a new database to SQLite; anything else must carry SQLite's header.
    if header and header != _SQLITE_HEADER:
        raise StateError(f"state store {path}: not a SQLite database (bad header)")


def _quick_check(path: str) -> None:
    # A read-only connection never checkpoints or rewrites the file, so a file that fails
    # the check is left exactly as it was found. Without a -wal file the main file is the
    # whole database: "immutable" reads it without creating -wal/-shm files beside it. With
    # one (the process was killed), the log must be read too, through a shared-memory index.
    if os.path.exists(path + "-wal"):
        uri = _uri(path, mode="ro")
    else:
        uri = _uri(path, mode="ro", immutable="1")
    try:
        ro = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise _state_error(path, "cannot open", exc) from exc
    try:
        problems = [row[0] for row in ro.execute("PRAGMA quick_check(5)").fetchall()]
        (app_id,) = ro.execute("PRAGMA application_id").fetchone()
        (objects,) = ro.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.Error as exc:
        raise _state_error(path, "check failed", exc) from exc
    finally:
        ro.close()
    if problems != ["ok"]:
        raise StateError(f"state store {path}: corrupt database: {'; '.join(problems)}")
    if objects and app_id != _APPLICATION_ID:
        raise StateError(
            f"state store {path}: a SQLite database of another application "
            f"(application_id {app_id:#x}), not a graceful state store"
        )


def _setup(conn: sqlite3.Connection, path: str) -> None:
    try:
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StateError(f"state store {path}: cannot switch to WAL mode (got {mode!r})")
        # FULL in WAL mode fsyncs the log at every commit: an acknowledged write survives
        # power loss, not only the death of the process (NORMAL would only survive the latter).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        (objects,) = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        if objects and app_id != _APPLICATION_ID:
            conn.execute("ROLLBACK")
            raise StateError(
                f"state store {path}: a SQLite database of another application "
                f"(application_id {app_id:#x}), not a graceful state store"
            )
        if app_id != _APPLICATION_ID:  # a new file; an existing store is not written to
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
            "key TEXT PRIMARY KEY NOT NULL, kind INTEGER NOT NULL, value BLOB, "
            "batch INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise _state_error(path, "cannot set up", exc) from exc


class Batcher(Generic[T]):
    """Collects items in memory and flushes them in batches: on size, on age, at shutdown.

    ``flush(items)`` is called with the oldest items first, never concurrently with itself. If
    it raises, the items stay buffered (in order, ahead of newer ones) and are retried by the
    next flush; nothing is dropped. At shutdown (`attach`) a final flush runs in the ``flush``
    phase; if it fails the hook fails, so the exit code says state may not be written.
    ``async with batcher:`` runs that final flush (`close`) when the block ends.

    Args:
        flush: async callable that writes a batch durably (for example with
            `DurableStore.put_many`).
        max_items: flush as soon as this many items are buffered.
        max_age: flush when the oldest buffered item is this many seconds old (a timer, not
            polling); ``None`` flushes on size and at shutdown only.
        name: label for logs.

    Example:
        ```python
        async def write(items: list[tuple[str, dict]]) -> None:
            await store.put_many(items)

        batcher = Batcher(write, max_items=500, max_age=0.5)
        batcher.attach(runtime)
        await batcher.add(("job-1", {"ok": True}))
        ```

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[object]],
        *,
        max_items: int = 1000,
        max_age: float | None = 1.0,
        name: str = "batcher",
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        if max_age is not None and max_age <= 0:
            raise ValueError(f"max_age must be positive or None, not {max_age}")
        self._flush_fn = flush
        self.max_items = max_items
        self.max_age = max_age
        self.name = name
        self.flushed = 0
        self._buffer: list[T] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False
        self._closed = False
        self._runtime: Runtime | None = None
        self._log = get_logger()

    @property
    def pending(self) -> int:
        """Items buffered and not yet flushed."""
        return len(self._buffer)

    def attach(self, runtime: Runtime) -> None:
        """Flush what is left in the ``flush`` phase of the runtime's shutdown.

        Every flushed item is counted with ``runtime.record_flushed`` (the ``flushed`` figure
        of the shutdown report and the ``graceful_flushed_items_total`` metric).

        Args:
            runtime: the runtime whose shutdown ends with this batcher's final flush.
        """
        self._runtime = runtime
        runtime.on_shutdown(phase=Phase.FLUSH, name=f"state.flush:{self.name}")(self.close)

    async def add(self, item: T) -> None:
        """Buffer ``item``; if the buffer is full, flush before returning (backpressure).

        A failed flush is logged, not raised: the items stay buffered and the next flush (by
        age, size or shutdown) retries them. While flushes fail, ``add`` stops waiting on
        them, so the buffer grows.

        Raises:
            StateError: the batcher was closed by its final flush.
        """
        if self._closed:
            raise StateError(f"batcher {self.name}: closed, item not accepted")
        self._buffer.append(item)
        # While flushes fail, the age timer retries them; size-triggered retries on every add
        # would only hammer a sink that is down.
        retry_by_timer = self._failing and self.max_age is not None
        if len(self._buffer) >= self.max_items and not retry_by_timer:
            await self._flush_logged("size", min_items=self.max_items)
        elif self._timer is None and self.max_age is not None:
            self._arm_timer()

    async def flush(self) -> int:
        """Flush everything buffered now.

        Returns:
            How many items were flushed.

        Raises:
            Exception: whatever ``flush`` raised; the items stay buffered.
        """
        return await self._flush("explicit", min_items=1)

    async def close(self) -> None:
        """Final flush: stop accepting items and flush what is buffered.

        Raises:
            Exception: the final flush failed; its items are still in `pending` (and will be
                lost when the process exits).
        """
        self._closed = True
        self._cancel_timer()
        await self._flush("shutdown", min_items=1)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Even when the block raised: what was added was accepted, so it is flushed.
        await self.close()

    async def _flush_logged(self, reason: str, *, min_items: int) -> None:
        try:
            await self._flush(reason, min_items=min_items)
        except Exception:
            pass  # logged by _flush; the items are kept for the next attempt

    async def _flush(self, reason: str, *, min_items: int) -> int:
        async with self._lock:
            if len(self._buffer) < min_items:
                return 0
            items, self._buffer = self._buffer, []
            self._cancel_timer()
            try:
                await self._flush_fn(items)
            except BaseException as exc:
                # Keep order: the failed batch goes back ahead of what arrived meanwhile.
                self._buffer[:0] = items
                if isinstance(exc, Exception):
                    self._failing = True
                    self._log.error(
                        "state.flush_failed",
                        batcher=self.name,
                        reason=reason,
                        items=len(items),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                if not self._closed and self.max_age is not None:
                    self._arm_timer()
                raise
            self._failing = False
            self.flushed += len(items)
            self._count_flushed(len(items))
            self._log.info("state.flushed", batcher=self.name, reason=reason, count=len(items))
            if self._buffer and self._timer is None and self.max_age is not None:
                self._arm_timer()
            return len(items)

    def _count_flushed(self, n: int) -> None:
        if self._runtime is not None:
            self._runtime.record_flushed(n)

    def _arm_timer(self) -> None:
        assert self.max_age is not None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.max_age, self._on_age)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_age(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(
            self._flush_logged("age", min_items=1), name=f"graceful-batcher:{self.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

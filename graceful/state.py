"""Durable state: a SQLite store where a write is acknowledged only once it is on disk, and a
batcher that flushes on size, on age and at shutdown.

`DurableStore` keeps one SQLite connection on a dedicated writer thread, so the event loop
never waits on disk. The database runs in WAL mode with ``synchronous=FULL``: every commit
appends to the write-ahead log and fsyncs it before ``put`` returns. Writes that arrive while a
commit is running are queued and committed together by the next transaction (group commit), so
one fsync acknowledges a whole batch of concurrent writers.

`Batcher` collects items in memory and hands them to an async ``flush`` callable when
``max_items`` are buffered, when the oldest item is ``max_age`` seconds old, and in the
``flush`` phase of a shutdown. A failed flush keeps its items for the next attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import secrets
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from graceful.exceptions import StateError
from graceful.hooks import Phase
from graceful.logs import get_logger

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["Batcher", "DurableStore", "Value"]

#: What a key maps to: a JSON object, text, bytes or nothing.
Value: TypeAlias = Mapping[str, Any] | str | bytes | None

T = TypeVar("T")

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
# Written into the database header so a SQLite file of another application is never mistaken
# for ours (and never gets our table added to it). ASCII "grcf".
_APPLICATION_ID: Final = 0x67726366
_TABLE: Final = "graceful_items"
_KIND_NULL, _KIND_TEXT, _KIND_BYTES, _KIND_JSON = 0, 1, 2, 3
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

Row: TypeAlias = tuple[str, int, str | bytes | None]


def _encode(key: str, value: Value) -> Row:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    key.encode()  # UnicodeEncodeError (a ValueError) for lone surrogates, here, not in a batch
    if value is None:
        return (key, _KIND_NULL, None)
    if isinstance(value, str):
        value.encode()
        return (key, _KIND_TEXT, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return (key, _KIND_BYTES, bytes(value))
    if isinstance(value, Mapping):
        return (key, _KIND_JSON, json.dumps(dict(value), separators=(",", ":")))
    raise TypeError(f"value must be a Mapping, str, bytes or None, not {type(value).__name__}")


def _decode(kind: int, raw: str | bytes | None) -> Value:
    if kind == _KIND_JSON:
        loaded: dict[str, Any] = json.loads(raw if raw is not None else "null")
        return loaded
    if kind == _KIND_BYTES:
        return raw if isinstance(raw, bytes) else b""
    return raw


@dataclass(slots=True)
class _Write:
    """Rows that must commit in the same transaction, and the caller waiting for them."""

    rows: list[Row]
    future: asyncio.Future[list[bool]]


@dataclass(slots=True)
class _Call:
    """A read (or the final close) run on the writer thread, in queue order."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    last: bool = False


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


class DurableStore:
    """A key-value store on SQLite where ``put`` returns only once the write is durable.

    Keys are strings; a key is stored once (``put`` is idempotent), so a client that retries
    after a lost acknowledgement never creates a duplicate. Values are JSON objects, text,
    bytes or ``None``, and come back from `get` as they went in.

    All calls must come from the event loop that opened the store.

    Durability: the database is in WAL mode with ``synchronous=FULL``, so each commit fsyncs
    the log before any writer in it is acknowledged. An acknowledged write survives SIGKILL
    (``docker kill``), a crash of the process and, on a disk that honours fsync, power loss.

    Args:
        path: the database file. Its directory must exist and be writable (SQLite keeps the
            ``-wal`` and ``-shm`` files beside it).
        registry: where the metrics are registered; ``None`` keeps them private.
        max_batch: most writes committed by one transaction; ``1`` turns group commit off
            (one transaction and one fsync per write), for comparison.
        busy_timeout: seconds a transaction waits for a lock held by another process before
            failing.
        check: run ``PRAGMA quick_check`` on open (time grows with the file's size).

    Example:
        ```python
        store = DurableStore("/data/state.db")
        await store.open()
        if await store.put("order-17", {"total": 12}):
            print("new")
        await store.close()
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
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must not be negative, not {busy_timeout}")
        self.path = os.fspath(path)
        self.max_batch = max_batch
        self.busy_timeout = busy_timeout
        self.check = check
        self._metrics = _make_metrics(registry)
        self._log = get_logger()
        self._queue: queue.SimpleQueue[_Write | _Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the store accepts reads and writes."""
        return self._accepting

    async def open(self) -> None:
        """Open (or create) the database and check it.

        Nothing is written to a file that fails a check: the store refuses it and leaves it as
        it is.

        Raises:
            StateError: the directory is missing or not writable, the file is read-only, is not
                a SQLite database, is corrupt or belongs to another application, or the disk
                is full. The message names the path and the reason.
        """
        if self._thread is not None:
            raise StateError(f"state store {self.path}: already open")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        # A fresh queue per opening: nothing left from an earlier one can reach this thread.
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"graceful-state:{self.path}", daemon=True
        )
        self._thread.start()
        try:
            await opened
        except BaseException as exc:
            self._thread = None
            if not isinstance(exc, StateError):
                # Cancelled while opening: close the connection the thread may still open.
                self._queue.put(_Call(_close_connection, loop.create_future(), last=True))
            raise
        self._accepting = True
        self._log.info("state.opened", path=self.path)

    async def close(self) -> None:
        """Commit what is queued, then close the database.

        Writes submitted before ``close`` are committed (or fail) first; writes submitted after
        it raise `StateError`. Closing a store that is not open does nothing.

        Raises:
            StateError: closing failed (the committed data is still safe in the WAL).
        """
        if not self._accepting:
            return
        self._accepting = False
        try:
            await self._submit(_close_connection, last=True)
        finally:
            self._thread = None
        self._log.info("state.closed", path=self.path)

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
        Concurrent calls share one transaction; if that transaction fails, every call in it
        raises and nothing of it is stored.

        Args:
            key: the item's identity, usually chosen by the client.
            value: a JSON object, text, bytes or ``None``.

        Returns:
            ``True`` if the key was new, ``False`` if it was already stored.

        Raises:
            StateError: the store is not open or the transaction failed (disk full, I/O
                error, lock held too long by another process).
            TypeError: the key or value has an unsupported type.
        """
        (new,) = await self._write([_encode(key, value)])
        return new

    async def put_many(self, items: Iterable[tuple[str, Value]] | Mapping[str, Value]) -> int:
        """Store several items atomically: all commit in one transaction, or none does.

        Args:
            items: ``(key, value)`` pairs, or a mapping of keys to values.

        Returns:
            How many of the keys were new.

        Raises:
            StateError: the store is not open or the transaction failed.
            TypeError: a key or value has an unsupported type.
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [_encode(key, value) for key, value in pairs]
        if not rows:
            return 0
        return sum(await self._write(rows))

    async def _write(self, rows: list[Row]) -> list[bool]:
        loop = self._running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._queue.put(_Write(rows, future))
        return await future

    # -- reads -----------------------------------------------------------------------------

    async def keys(self) -> list[str]:
        """Every stored key, in the order they were first written."""
        rows: list[tuple[str]] = await self._submit(
            lambda conn: conn.execute(f"SELECT key FROM {_TABLE} ORDER BY rowid").fetchall()
        )
        return [key for (key,) in rows]

    async def get(self, key: str, default: Value = None) -> Value:
        """The value stored under ``key``, or ``default`` when the key is not stored."""

        def read(conn: sqlite3.Connection) -> tuple[int, str | bytes | None] | None:
            cur = conn.execute(f"SELECT kind, value FROM {_TABLE} WHERE key = ?", (key,))
            row: tuple[int, str | bytes | None] | None = cur.fetchone()
            return row

        row = await self._submit(read)
        return default if row is None else _decode(*row)

    async def count(self) -> int:
        """How many keys are stored."""
        (n,) = await self._submit(
            lambda conn: conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
        )
        return int(n)

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False) -> Any:
        loop = self._running_loop(closing=last)
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Call(fn, future, last))
        return await future

    def _running_loop(self, *, closing: bool = False) -> asyncio.AbstractEventLoop:
        if not (self._accepting or closing) or self._loop is None:
            raise StateError(f"state store {self.path}: not open")
        return self._loop

    # -- the writer thread -----------------------------------------------------------------

    def _run(self, opened: asyncio.Future[None]) -> None:
        try:
            conn = _connect(self.path, busy_timeout=self.busy_timeout, check=self.check)
        except StateError as exc:
            self._settle([(opened, exc)])
            return
        self._settle([(opened, None)])
        carry: _Write | _Call | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if isinstance(job, _Call):
                self._settle([_call(job, conn, self.path)])
                if job.last:
                    return
                continue
            batch = [job]
            size = len(job.rows)
            # Group commit: everything queued while the previous transaction was committing
            # goes into this one. A read or close ends the batch and keeps its place in line.
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Call):
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt.rows)
            self._settle(self._commit(conn, batch, size))

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Write], size: int
    ) -> list[tuple[asyncio.Future[Any], object]]:
        try:
            flags = _insert(conn, [row for w in batch for row in w.rows])
        except Exception as exc:
            _rollback(conn)
            self._metrics.failures.inc()
            reason = _reason(exc)
            self._log.error("state.commit_failed", path=self.path, writes=size, error=reason)
            return [(w.future, _state_error(self.path, "write failed", exc)) for w in batch]
        self._metrics.commits.inc()
        self._metrics.batch_size.observe(size)
        self._metrics.items.inc(sum(flags))
        outcomes: list[tuple[asyncio.Future[Any], object]] = []
        start = 0
        for w in batch:
            outcomes.append((w.future, flags[start : start + len(w.rows)]))
            start += len(w.rows)
        return outcomes

    def _settle(self, outcomes: list[tuple[asyncio.Future[Any], object]]) -> None:
        """Resolve futures on their loop; one wake-up per transaction, not per writer."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_resolve_all, outcomes)
        except RuntimeError:
            # The loop was closed under us (the process is exiting): nobody is waiting.
            pass


_INSERT_ROW: Final = f"INSERT OR IGNORE INTO {_TABLE} (key, kind, value) VALUES (?, ?, ?)"
_INSERT_ROWS: Final = (
    f"INSERT OR IGNORE INTO {_TABLE} (key, kind, value, batch) "
    "SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), "
    "json_extract(j.value, '$[2]'), ? FROM json_each(?) AS j ORDER BY j.key"
)
_STORED_AMONG: Final = (
    f"SELECT json_group_array(key) FROM {_TABLE} WHERE key IN (SELECT value FROM json_each(?))"
)
_WRITTEN_BY: Final = (
    f"SELECT json_group_array(key) FROM {_TABLE} "
    "WHERE key IN (SELECT value FROM json_each(?)) AND batch = ?"
)


def _insert(conn: sqlite3.Connection, rows: list[Row]) -> list[bool]:
    """Insert ``rows`` in one transaction; True for each key that was new (first occurrence).

    The common case is one statement in autocommit mode, that is one transaction and one
    fsync, over a JSON array of the whole batch. Few statements matter more than it seems: the
    sqlite3 module releases and retakes the GIL around every statement, and while the event
    loop is busy each retake can wait a full switch interval (5 ms).
    """
    keys = [row[0] for row in rows]
    if any(kind == _KIND_BYTES for _, kind, _ in rows):
        # JSON cannot carry bytes: row by row, in an explicit transaction (rare).
        conn.execute("BEGIN IMMEDIATE")
        (stored,) = conn.execute(_STORED_AMONG, (json.dumps(keys),)).fetchone()
        for row in rows:
            conn.execute(_INSERT_ROW, row)
        conn.execute("COMMIT")
        old: set[str] = set(json.loads(stored))
        return _first_new(keys, lambda key: key not in old)
    # Tag the rows so that, if some keys were already stored, the ones this statement wrote
    # can be told apart afterwards without a second statement in the common case.
    tag = secrets.randbits(62)
    inserted = conn.execute(_INSERT_ROWS, (tag, json.dumps(rows))).rowcount
    distinct = set(keys)
    if inserted == len(distinct):
        return _first_new(keys, lambda key: True)
    (written,) = conn.execute(_WRITTEN_BY, (json.dumps(keys), tag)).fetchone()
    return _first_new(keys, set(json.loads(written)).__contains__)


def _first_new(keys: list[str], new: Callable[[str], bool]) -> list[bool]:
    seen: set[str] = set()
    flags = []
    for key in keys:
        flags.append(key not in seen and new(key))
        seen.add(key)
    return flags


def _resolve_all(outcomes: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, outcome in outcomes:
        if future.done():  # the caller was cancelled; the write itself stands
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _call(job: _Call, conn: sqlite3.Connection, path: str) -> tuple[asyncio.Future[Any], object]:
    try:
        return (job.future, job.fn(conn))
    except Exception as exc:
        return (job.future, _state_error(path, "close failed" if job.last else "read failed", exc))


def _close_connection(conn: sqlite3.Connection) -> None:
    # The last connection to close checkpoints the WAL into the main file and removes it.
    conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back (it does on SQLITE_FULL and I/O errors).
            pass


def _reason(exc: Exception) -> str:
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
    return f"{exc} ({name})" if name else str(exc)


def _state_error(path: str, what: str, exc: Exception) -> StateError:
    err = StateError(f"state store {path}: {what}: {_reason(exc)}")
    err.__cause__ = exc
    return err


def _connect(path: str, *, busy_timeout: float, check: bool) -> sqlite3.Connection:
    """Check the file without writing to it, then open it for writing and set it up."""
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
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
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
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
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

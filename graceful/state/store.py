"""`DurableStore`: the public store. It checks what it is given, queues writes for the writer
thread and reads for the reader threads, and opens and closes both with the file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from prometheus_client import REGISTRY, CollectorRegistry

from graceful.exceptions import StateError
from graceful.hooks import Phase
from graceful.state.events import StateLog
from graceful.state.readers import Readers
from graceful.state.sqlite import TABLE, close_connection
from graceful.state.values import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    SQLITE_MAX_LENGTH,
    Row,
    Value,
    check_key,
    decode,
    encode,
)
from graceful.state.writer import CommitMetrics, Writer

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["DurableStore"]


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
            if not 1 <= limit <= SQLITE_MAX_LENGTH:
                raise ValueError(f"{name} must be from 1 to {SQLITE_MAX_LENGTH}, not {limit}")
        self.path = path
        self.max_batch = max_batch
        self.busy_timeout = busy_timeout
        self.check = check
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self._metrics = CommitMetrics.register(registry)
        self._log = StateLog()
        self._writer: Writer | None = None
        self._readers: Readers | None = None
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the store accepts reads and writes."""
        writer = self._writer
        return (
            self._accepting
            and writer is not None
            and writer.failure is None
            and writer.opened.lost is None
        )

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
        if self._writer is not None:
            raise StateError(f"state store {self.path}: already open")
        loop = asyncio.get_running_loop()
        # A fresh writer (and queue) per opening: nothing left from an earlier one can reach it.
        writer = Writer(self.path, loop, max_batch=self.max_batch, metrics=self._metrics)
        self._writer = writer
        opened = writer.start(busy_timeout=self.busy_timeout, check=self.check)
        try:
            read_conns = await opened
        except BaseException as exc:
            self._writer = None
            if not isinstance(exc, StateError):
                # Cancelled while opening: close the connections the thread may still open.
                writer.abandon()
            raise
        self._readers = Readers(read_conns, self.path, loop)
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
                await self._submit(close_connection, last=True)
            finally:
                self._writer = None
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
        # _row and _write, inlined: this runs for every put.
        row = encode(key, value, max_key=self.max_key_bytes, max_value=self.max_value_bytes)
        (new,) = await self._open_writer().write([row])
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
        return encode(key, value, max_key=self.max_key_bytes, max_value=self.max_value_bytes)

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
            check_key(after, None)

        def read(conn: sqlite3.Connection) -> list[tuple[str]] | None:
            start = 0
            if after is not None:
                found = conn.execute(f"SELECT rowid FROM {TABLE} WHERE key = ?", (after,))
                row = found.fetchone()
                if row is None:
                    return None
                start = row[0]
            rows: list[tuple[str]] = conn.execute(
                f"SELECT key FROM {TABLE} WHERE rowid > ? ORDER BY rowid LIMIT ?",
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
        check_key(key, None)

        def read(conn: sqlite3.Connection) -> tuple[int, str | bytes | None] | None:
            cur = conn.execute(f"SELECT kind, value FROM {TABLE} WHERE key = ?", (key,))
            row: tuple[int, str | bytes | None] | None = cur.fetchone()
            return row

        row = await self._read(read)
        return default if row is None else decode(*row)

    async def count(self) -> int:
        """How many keys are stored."""
        (n,) = await self._read(
            lambda conn: conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        )
        return int(n)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        readers, writer = self._readers, self._writer
        if not self._accepting or readers is None or writer is None:
            raise StateError(f"state store {self.path}: not open")
        if writer.opened.lost is not None:
            raise StateError(str(writer.opened.lost))
        try:
            return await readers.submit(fn)
        except StateError as exc:
            # A read of a deleted file fails with SQLite's bare SQLITE_IOERR_FSTAT: say why
            # (and refuse from now on) when the file is gone. Checked on failure only.
            lost = writer.opened.check()
            if lost is not None:
                raise StateError(str(lost)) from exc
            raise

    # -- the writer thread -----------------------------------------------------------------

    async def _write(self, rows: list[Row]) -> list[bool]:
        return await self._open_writer().write(rows)

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False) -> Any:
        """Run ``fn`` on the writer thread, in queue order (the close, and tests)."""
        return await self._open_writer(closing=last).call(fn, last=last)

    def _open_writer(self, *, closing: bool = False) -> Writer:
        writer = self._writer
        if not (self._accepting or closing) or writer is None:
            raise StateError(f"state store {self.path}: not open")
        return writer

"""Opening the database file: checks that never write to a file they refuse, the connections
(through an escaped ``file:`` URI), the WAL and fsync settings, the schema, and SQLite's errors
turned into a `StateError` that names the path and the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Final

from graceful.exceptions import StateError

__all__ = [
    "TABLE",
    "close_connection",
    "close_quietly",
    "connect_all",
    "reason",
    "rollback",
    "state_error",
]

#: The store's one table: key, kind, value and the tag of the transaction that wrote it.
TABLE: Final = "graceful_items"

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
# Written into the database header so a SQLite file of another application is never mistaken
# for ours (and never gets our table added to it). ASCII "grcf".
_APPLICATION_ID: Final = 0x67726366
# Reads run on this many threads, each with its own read-only connection.
_READERS: Final = 2


# -- errors ------------------------------------------------------------------------------------


def reason(exc: BaseException) -> str:
    """What went wrong, in words, with SQLite's own message."""
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


def state_error(path: str, what: str, exc: BaseException) -> StateError:
    """A `StateError` naming the store, what failed and why, caused by ``exc``."""
    err = StateError(f"state store {path}: {what}: {reason(exc)}")
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


def connect_all(
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
        close_quietly([*readers, conn])
        if isinstance(exc, sqlite3.Error):
            raise state_error(path, "cannot open a reader", exc) from exc
        raise
    return conn, readers


def _connect(path: str, *, busy_timeout: float, check: bool) -> sqlite3.Connection:
    """Check the file without writing to it, then open it for writing and set it up."""
    if "\x00" in path:
        raise StateError(f"state store {path!r}: the path contains a NUL character")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StateError(f"state store {path}: directory {directory} does not exist")
    with _one_opening_at_a_time(directory):
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
            raise state_error(path, "cannot open", exc) from exc
        try:
            _setup(conn, path)
        except BaseException:
            conn.close()
            if not exists:
                _remove_if_empty(path)
            raise
    return conn


@contextlib.contextmanager
def _one_opening_at_a_time(directory: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the store's directory while a store there is opened.

    Several processes open one store at the same moment when ``graceful serve --workers N``
    starts its workers. Unserialized, a new file breaks them: SQLite answers the switch to
    WAL with SQLITE_BUSY at once, without waiting ``busy_timeout``, while another connection
    reads the file (4 workers on a new file failed about one start in twenty here); and the
    check of an existing file without a ``-wal`` reads it as ``immutable`` while another
    process may be switching it. Best effort: where ``flock`` is refused, open unlocked.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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
        raise state_error(path, "cannot open", exc) from exc
    try:
        problems = [row[0] for row in ro.execute("PRAGMA quick_check(5)").fetchall()]
        (app_id,) = ro.execute("PRAGMA application_id").fetchone()
        (objects,) = ro.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.Error as exc:
        raise state_error(path, "check failed", exc) from exc
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
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "key TEXT PRIMARY KEY NOT NULL, kind INTEGER NOT NULL, value BLOB, "
            "batch INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        rollback(conn)
        raise state_error(path, "cannot set up", exc) from exc


# -- closing -----------------------------------------------------------------------------------


def close_connection(conn: sqlite3.Connection) -> None:
    """Close ``conn``, as the last job of the thread that uses it."""
    # The last connection to close checkpoints the WAL into the main file and removes it.
    conn.close()


def close_quietly(conns: list[sqlite3.Connection]) -> None:
    """Close every connection, ignoring errors (the store is failing already)."""
    for conn in conns:
        try:
            conn.close()
        except sqlite3.Error:
            pass


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back (it does on SQLITE_FULL and I/O errors).
            pass

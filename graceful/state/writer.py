"""The writer thread: one connection, a queue of writes, group commit, and the INSERT.

Writes that arrive while a commit is running are queued and committed together by the next
transaction, so one fsync acknowledges a whole batch of concurrent writers. A transaction that
fails because of one write is split until that write stands alone, so the others still commit.
Every queued job gets an answer, even when the thread itself dies.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import secrets
import sqlite3
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from graceful.exceptions import StateError
from graceful.state.events import StateLog
from graceful.state.identity import FileLost, OpenedFile
from graceful.state.jobs import Call, Outcome, Write, run_call, settle
from graceful.state.sqlite import (
    TABLE,
    close_connection,
    close_quietly,
    connect_all,
    reason,
    rollback,
    state_error,
)
from graceful.state.values import Row

__all__ = ["CommitMetrics", "Writer"]

_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# Rows per INSERT statement: bounds the SQL text and its compile time (a batch larger than
# this, from a large put_many, takes several statements in one explicit transaction).
_MAX_ROWS_PER_STATEMENT: Final = 4096


@dataclass(slots=True)
class CommitMetrics:
    """What the writer counts: transactions committed and failed, keys, batch sizes, and
    files found deleted or replaced while open."""

    commits: Counter
    failures: Counter
    items: Counter
    batch_size: Histogram
    lost: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry | None) -> CommitMetrics:
        """The metrics, registered in ``registry`` (``None``: a private one).

        One set per registry: every store of a process that uses the same registry counts
        into it (a store opened after another one closed, a second test's app, two stores at
        once), instead of failing on a duplicated time series.
        """
        if registry is None:  # private: code that does not export metrics at all
            return cls._create(CollectorRegistry(auto_describe=True))
        found = _REGISTERED.get(registry)
        if found is None:
            found = _REGISTERED[registry] = cls._create(registry)
        return found

    @classmethod
    def _create(cls, reg: CollectorRegistry) -> CommitMetrics:
        return cls(
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
            lost=Counter(
                "graceful_state_file_lost",
                "Openings that found their file (or its -wal) deleted or replaced; the store "
                "refused every later call.",
                registry=reg,
            ),
        )


#: The metrics registered in each registry by a store (weakly: a test's registry goes away).
_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, CommitMetrics] = (
    weakref.WeakKeyDictionary()
)


class Writer:
    """The writer thread of one opening of a store, and the queue that feeds it.

    `start` runs the thread, which opens the database; `write` and `call` queue jobs, answered
    in queue order on ``loop``. A call with ``last`` closes the connection and ends the thread.
    """

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int,
        metrics: CommitMetrics,
    ) -> None:
        self.path = path
        self.max_batch = max_batch
        self._loop = loop
        self._metrics = metrics
        self._log = StateLog()
        self._queue: queue.SimpleQueue[Write | Call] = queue.SimpleQueue()
        # Held while a job is queued and while a dying writer thread empties the queue, so no
        # job can slip in after the last one was failed.
        self._queue_lock = threading.Lock()
        #: Why the thread died, once it has: every later job fails with it.
        self.failure: StateError | None = None
        #: What the path named when the file was opened: checked before each acknowledgement.
        self.opened = OpenedFile(path, metrics.lost)
        # Each transaction's tag (see `_insert`): from a random start, so no other opening
        # (this process's, another's, an earlier one's) uses the same ones; counted up from
        # there, so no transaction waits on a system call (one that lets the loop take the GIL).
        self._tags = itertools.count(secrets.randbits(62))

    def start(
        self, *, busy_timeout: float, check: bool
    ) -> asyncio.Future[list[sqlite3.Connection]]:
        """Start the thread, which opens the file (see `connect_all`).

        Returns:
            A future that gets the readers' connections once the file is open.
        """
        opened: asyncio.Future[list[sqlite3.Connection]] = self._loop.create_future()
        thread = threading.Thread(
            target=self._run,
            args=(opened, busy_timeout, check),
            name=f"graceful-state:{self.path}",
            daemon=True,
        )
        thread.start()
        return opened

    def abandon(self) -> None:
        """Close the connections the thread may still open (the opening was cancelled)."""
        self._queue.put(Call(close_connection, self._loop.create_future(), last=True))

    def write(self, rows: list[Row]) -> asyncio.Future[list[bool]]:
        """Queue ``rows`` for one transaction; the future gets True for each new key."""
        future: asyncio.Future[list[bool]] = self._loop.create_future()
        with self._queue_lock:  # as in _enqueue, inlined: this runs for every put
            if self.failure is None:
                self._queue.put(Write(rows, future))
                return future
        self._enqueue(Write(rows, future))  # raises the failure
        return future

    def call(
        self, fn: Callable[[sqlite3.Connection], Any], *, last: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``fn`` to run on the writer's connection, in queue order."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(Call(fn, future, last))
        return future

    def _enqueue(self, job: Write | Call) -> None:
        with self._queue_lock:
            failure = self.failure
            if failure is None:
                self._queue.put(job)
                return
        raise StateError(str(failure)) from failure.__cause__

    def _run(
        self, opened: asyncio.Future[list[sqlite3.Connection]], busy_timeout: float, check: bool
    ) -> None:
        try:
            conn, readers = connect_all(self.path, busy_timeout, check)
            try:
                self.opened.record()
            except BaseException:
                close_quietly([*readers, conn])
                raise
        except BaseException as exc:  # open() must get an answer, whatever went wrong
            error = (
                exc if isinstance(exc, StateError) else state_error(self.path, "cannot open", exc)
            )
            settle(self._loop, [(opened, error)])
            return
        settle(self._loop, [(opened, readers)])
        in_hand: list[Write | Call] = []
        try:
            self._serve(conn, readers, in_hand)
        except BaseException as exc:  # no caller may wait forever, whatever went wrong
            self._fail_everything(exc, in_hand)
            close_quietly([*readers, conn])

    def _serve(
        self,
        conn: sqlite3.Connection,
        readers: list[sqlite3.Connection],
        in_hand: list[Write | Call],
    ) -> None:
        carry: Write | Call | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            in_hand[:] = [job]
            if isinstance(job, Call):
                if job.last:
                    # A close after the file went away fails, loudly: what this opening
                    # acknowledged before is gone with it (the connections are closed all the
                    # same, and SQLite neither checkpoints nor deletes a moved file's log).
                    self._refuse_if_lost(conn)
                    # Normally closed by their own threads already; not if open() was cancelled.
                    close_quietly(readers)
                settle(self._loop, [run_call(job, conn, self.path)])
                in_hand.clear()
                if job.last:
                    return
                continue
            batch = [job]
            size = len(job.rows)
            get = self._queue.get_nowait
            # Group commit: everything queued while the previous transaction was committing
            # goes into this one. A call or close ends the batch and keeps its place in line
            # (in hand too: should this thread die, it gets its answer with the batch).
            while size < self.max_batch:
                try:
                    nxt = get()
                except queue.Empty:
                    break
                in_hand.append(nxt)
                if isinstance(nxt, Call):
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt.rows)
            outcomes = self._commit(conn, batch)
            # Before the acknowledgement: committed into a file that is no longer at the path
            # is not stored. The batch (still in hand) and everything after it fail.
            self._refuse_if_lost(conn)
            settle(self._loop, outcomes)
            in_hand.clear()

    def _refuse_if_lost(self, conn: sqlite3.Connection) -> None:
        lost = self.opened.check()
        if lost is not None:
            _empty_the_log(conn)
            raise lost

    def _commit(self, conn: sqlite3.Connection, batch: list[Write]) -> list[Outcome]:
        rows = list(itertools.chain.from_iterable(w.rows for w in batch))
        size = len(rows)
        try:
            flags = _insert(conn, rows, next(self._tags))
        except Exception as exc:
            rollback(conn)
            if len(batch) > 1 and _caused_by_a_write(exc):
                # One write broke the transaction: commit the halves apart, and so on down to
                # the write at fault, so the others are stored (about 2·log2(n) transactions).
                half = len(batch) // 2
                return self._commit(conn, batch[:half]) + self._commit(conn, batch[half:])
            self._metrics.failures.inc()
            self._log.error("state.commit_failed", path=self.path, writes=size, error=reason(exc))
            return [(w.future, state_error(self.path, "write failed", exc)) for w in batch]
        self._metrics.commits.inc()
        self._metrics.batch_size.observe(size)
        self._metrics.items.inc(sum(flags))
        if size == len(batch):  # one row per write, the common case
            return list(zip((w.future for w in batch), ([flag] for flag in flags), strict=True))
        outcomes: list[Outcome] = []
        start = 0
        for w in batch:
            outcomes.append((w.future, flags[start : start + len(w.rows)]))
            start += len(w.rows)
        return outcomes

    def _fail_everything(self, exc: BaseException, in_hand: list[Write | Call]) -> None:
        """The writer thread is dying: fail every queued call now and every later one."""
        if isinstance(exc, FileLost):
            failure: StateError = exc  # logged once already, by the check that found it
        else:
            failure = state_error(self.path, "the writer thread failed", exc)
        with self._queue_lock:
            self.failure = failure
            jobs = list(in_hand)
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        if failure is not exc:
            self._log.error("state.writer_failed", path=self.path, error=str(failure))
        settle(self._loop, [(job.future, StateError(str(failure))) for job in jobs])


def _empty_the_log(conn: sqlite3.Connection) -> None:
    """Move every commit from the log into the opened file, then truncate the log.

    Once the file at the path is not the one opened, the log is poison: SQLite leaves it at
    ``<path>-wal`` (it neither checkpoints nor deletes the log of a moved file on close), and
    the next opening would replay it onto whatever file is now at the path, a restored backup
    included. Checkpointed through the open descriptors, the commits land in the opened file
    (which may live on under another name) and the log becomes empty; when only the log was
    deleted, the acknowledged writes it held are saved into the file that is still there.
    Best effort: another process reading the file can keep part of the log from moving.
    """
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass


# -- the INSERT --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _insert_sql(rows: int) -> str:
    # ?1 is the transaction's tag, bound once for all rows; a bare ? takes the number after
    # the highest so far, so the rows bind ?2, ?3, ?4, then ?5... in order.
    values = "(?2,?,?,?1)" + ",(?,?,?,?1)" * (rows - 1)
    return (
        f"INSERT INTO {TABLE} (key, kind, value, batch) VALUES {values} "
        "ON CONFLICT (key) DO NOTHING"
    )


def _statement_size(rows: int) -> int:
    """``rows`` rounded up to one of four sizes per power of two (4, 5, 6, 7 times one).

    A handful of compiled statements serve every batch (about 50 up to 4096 rows, within
    the connection's statement cache), and at most a fifth of a statement is padding.
    """
    if rows <= 4:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


def _insert(conn: sqlite3.Connection, rows: list[Row], tag: int) -> list[bool]:
    """Insert ``rows`` in one transaction; True for each key that was new (first occurrence).

    Every key and value is a bound parameter, so each is stored exactly as it is. The common
    case is one multi-row statement in autocommit mode, that is one transaction and one fsync.
    Few statements matter more than it seems: the sqlite3 module releases and retakes the GIL
    around every statement (and every row of ``executemany``), and while the event loop is
    busy each retake can wait a full switch interval (5 ms).
    """
    # The rows carry ``tag``, this transaction's own, so that, if some keys were already
    # stored, the ones this transaction wrote can be told apart afterwards (`_written_by`).
    per_statement = min(
        _MAX_ROWS_PER_STATEMENT, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1) // 3
    )
    if len(rows) <= per_statement:
        inserted = _insert_chunk(conn, rows, tag, per_statement)
    else:
        conn.execute("BEGIN IMMEDIATE")
        inserted = sum(
            _insert_chunk(conn, rows[i : i + per_statement], tag, per_statement)
            for i in range(0, len(rows), per_statement)
        )
        conn.execute("COMMIT")
    if inserted == len(rows):
        # Every row inserted: no key was stored already, none came twice (the common case).
        return [True] * len(rows)
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


def _insert_chunk(conn: sqlite3.Connection, rows: list[Row], tag: int, most: int) -> int:
    # Padded to the statement's size (at most ``most`` rows, what SQLite can bind) with
    # copies of the last row (a repeated key inserts nothing).
    size = min(_statement_size(len(rows)), most)
    params: list[object] = [tag, *itertools.chain.from_iterable(rows)]
    params.extend(rows[-1] * (size - len(rows)))
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
            f"FROM b JOIN {TABLE} AS t ON t.key = b.k WHERE t.batch = ?"
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

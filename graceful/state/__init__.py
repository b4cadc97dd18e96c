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

Modules: ``store`` (`DurableStore`), ``batcher`` (`Batcher`), ``values`` (limits, checks and
the exact encoding), ``sqlite`` (opening, checking and closing the file; errors), ``writer``
(the writer thread, group commit, the INSERT), ``readers`` (the reader threads), ``jobs``
(what the threads run and how results reach the event loop), ``identity`` (whether the path
still names the file that was opened), ``events`` (where the log events go).
"""

from __future__ import annotations

from graceful.state.batcher import Batcher
from graceful.state.store import DurableStore
from graceful.state.values import MAX_KEY_BYTES, MAX_VALUE_BYTES, Value

__all__ = ["MAX_KEY_BYTES", "MAX_VALUE_BYTES", "Batcher", "DurableStore", "Value"]

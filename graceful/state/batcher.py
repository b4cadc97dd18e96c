"""`Batcher`: collects items in memory and hands them to an async ``flush`` callable when
``max_items`` are buffered, when the oldest item is ``max_age`` seconds old, and in the
``flush`` phase of a shutdown. A failed flush keeps its items for the next attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from graceful.exceptions import StateError
from graceful.hooks import Phase
from graceful.state.events import StateLog

if TYPE_CHECKING:
    from graceful.runtime import Runtime

__all__ = ["Batcher"]

T = TypeVar("T")


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
        self._log = StateLog()

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

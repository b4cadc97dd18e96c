"""Steady load through a load balancer while replicas are replaced, split roll by roll.

What ``rolling-restart`` (replicas the harness replaces) and ``swarm-update`` (an orchestrator
replaces them) share: load that runs for the whole of the rolls and stops by itself at its
bounds, and each request counted with the roll it was sent in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from graceful.harness.context import Context, gather_bounded
from graceful.harness.load import Ledger

__all__ = ["RollWindow", "split_by_roll", "steady_load"]


class RollWindow(Protocol):
    """A roll as :func:`split_by_roll` fills it in."""

    started: float
    started_wall: float
    ledger: Ledger
    window: tuple[float, float]


@contextlib.asynccontextmanager
async def steady_load(
    ctx: Context,
    port: int,
    ledger: Ledger,
    *,
    concurrency: int,
    work_ms: int,
    timeout: float,
    max_requests: int,
    max_seconds: float,
) -> AsyncIterator[None]:
    """Keep ``concurrency`` clients sending work requests to ``port`` while the block runs.

    A client goes on after a failure (the balancer stays up, and a failed request is what a
    scenario counts); the load ends with the block, or at its bounds.

    Raises:
        RuntimeError: the load itself broke (not a failed request: those are records), so
            no roll should be judged on it.
    """
    stop = asyncio.Event()
    async with ctx.load_client(port, ledger, connections=concurrency, timeout=timeout) as client:
        load = asyncio.create_task(
            client.steady(
                stop=stop,
                concurrency=concurrency,
                ms=ctx.workload.short_ms(work_ms),
                max_requests=max_requests,
                max_seconds=max_seconds,
                retry_after=0.01,
            )
        )
        try:
            yield
        finally:
            stop.set()
            await gather_bounded([load])
    if not load.cancelled() and load.exception() is not None:
        raise RuntimeError("the load client failed") from load.exception()


def split_by_roll(ledger: Ledger, rolls: Sequence[RollWindow]) -> None:
    """Give each roll the requests sent during it: the warm-up before the first roll and the
    last requests after the last one count with them."""
    inf = float("inf")
    for i, roll in enumerate(rolls):
        last = i + 1 == len(rolls)
        start, end = (roll.started if i else -inf), (inf if last else rolls[i + 1].started)
        roll.ledger = Ledger([r for r in ledger.records if start <= r.sent < end])
        roll.window = (
            roll.started_wall if i else -inf,
            inf if last else rolls[i + 1].started_wall,
        )

"""Acknowledged writes after a restart: read them back on the same volume and judge the loss.

The harness's ledger holds every write the service acknowledged. After a stop, a kill or a
power cut, a new container on the same volume is asked for them: the items list
(``GET /items``), or, with a read template (``GET /orders/{id}``), each acknowledged id in
turn. An acknowledged id that is not there is a lost write.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from graceful.harness.container import ContainerError
from graceful.harness.context import Context, Findings, Service
from graceful.harness.load import Ledger

__all__ = ["READ_ERRORS", "judge_writes", "read_back"]

#: What reading the stored ids back can raise: the container did not come up, the store did
#: not answer (or not as the workload says it would).
READ_ERRORS = (ContainerError, httpx.HTTPError, KeyError, TypeError, ValueError)


async def read_back(ctx: Context, volume: str, ids: Sequence[str]) -> set[str]:
    """Start a new container on ``volume`` and return which of ``ids`` it holds (with an
    items path, every id it lists); then kill it.

    With a read template and no ``ids``, one id never written is read: the store must answer.

    Raises:
        ContainerError: the new container did not come up.
        httpx.HTTPError: reading failed (no answer, or an answer the workload does not
            allow).
        KeyError, TypeError, ValueError: the items list is not ``{"ids": [...]}``.

    .. versionadded:: 0.1
    """
    ctx.step("restarting on the same volume")
    service = await ctx.start(volume)
    try:
        async with ctx.client(service, Ledger()) as client:
            return await client.stored_ids(ids)
    finally:
        await ctx.kill(service, "SIGKILL")


async def judge_writes(f: Findings, ctx: Context, service: Service, ledger: Ledger) -> int:
    """Restart on the service's volume; every acknowledged write must be there. Returns the
    loss.

    .. versionadded:: 0.1
    """
    acked = ledger.acked_ids()
    if not ctx.workload.has_items or not acked:
        return 0
    try:
        stored = await read_back(ctx, service.volume, acked)
    except READ_ERRORS as exc:
        f.problem(
            f"after a restart on the same volume the stored writes could not be read "
            f"({ctx.workload.reads_from}): {exc}"
        )
        return 0
    lost = [i for i in acked if i not in stored]
    if lost:
        shown = ", ".join(lost[:5]) + (", …" if len(lost) > 5 else "")
        f.problem(
            f"acknowledged writes lost ({len(lost)} of {len(acked)}): ids {shown}: the service "
            "acknowledged writes before they were durable"
        )
    else:
        f.note(f"all {len(acked)} acknowledged writes were there after a restart")
    return len(lost)

"""Acknowledged writes after a restart: read them back on the same volume and judge the loss.

The harness's ledger holds every write the service acknowledged. After a stop, a kill or a
power cut, a new container on the same volume is asked for them: the items list
(``GET /items``), or, with a read template (``GET /orders/{id}``), each acknowledged id in
turn. An acknowledged id that is not there is a lost write.

A read template is only evidence while it answers 404 for what is not stored, and the
preflight checks that on the first container only: an app whose read answers 2xx for any id
after a restart (a catch-all route, a cache that answers for what it lost) would find every
lost write. So every read-back also reads :data:`CONTROL_READS` ids never written, on the
same new container; a 2xx for one of them is :class:`UnverifiableRead`, which fails the
scenario instead of passing it with the writes unchecked.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import httpx

from graceful.harness.container import ContainerError
from graceful.harness.context import Context, Findings, Service
from graceful.harness.load import Ledger, LoadClient, classify

__all__ = [
    "CONTROL_READS",
    "READ_ERRORS",
    "READ_TIMEOUT_S",
    "ReadBackError",
    "UnverifiableRead",
    "check_writes",
    "checked_stored_ids",
    "judge_writes",
    "read_back",
]

#: Ids never written that are read after each restart, beside the acknowledged ones.
CONTROL_READS = 3
#: The bound of each read after a restart (a hang guard; a timeout is named in the finding).
READ_TIMEOUT_S = 30.0


class ReadBackError(ValueError):
    """Reading the stored ids back failed; the message says how, on one line.

    .. versionadded:: 0.1
    """


class UnverifiableRead(ReadBackError):
    """The read template answered 2xx for ids never written: it cannot tell a stored id from
    a lost one, so the acknowledged writes could not be checked.

    .. versionadded:: 0.1
    """


#: What reading the stored ids back can raise: the container did not come up, the store did
#: not answer (or not as the workload says it would).
READ_ERRORS = (ContainerError, httpx.HTTPError, KeyError, TypeError, ValueError)


async def read_back(ctx: Context, volume: str, ids: Sequence[str]) -> set[str]:
    """Start a new container on ``volume`` and return which of ``ids`` it holds (with an
    items path, every id it lists); then kill it. See :func:`checked_stored_ids`.

    Raises:
        ContainerError: the new container did not come up.
        ReadBackError: reading failed (no answer in :data:`READ_TIMEOUT_S`, or an answer
            the workload does not allow); :class:`UnverifiableRead` when an id never
            written was found.
        KeyError, TypeError, ValueError: the items list is not ``{"ids": [...]}``.

    .. versionadded:: 0.1
    """
    ctx.step("restarting on the same volume")
    service = await ctx.start(volume)
    try:
        async with ctx.client(service, Ledger(), timeout=READ_TIMEOUT_S) as client:
            return await checked_stored_ids(client, ids)
    finally:
        await ctx.kill(service, "SIGKILL")


async def checked_stored_ids(client: LoadClient, ids: Sequence[str]) -> set[str]:
    """The ids of ``ids`` the service holds (:meth:`LoadClient.stored_ids`); with a read
    template, first :data:`CONTROL_READS` ids never written are read, and each must answer
    404. With no ``ids`` the controls alone are read: the store must answer.

    Raises:
        UnverifiableRead: an id never written answered 2xx.
        ReadBackError: a read was not answered, or not with 2xx or 404 (one line, naming
            the request and the status, or the timeout).

    .. versionadded:: 0.1
    """
    template = client.workload.read_template
    try:
        if template is None:
            return await client.stored_ids(ids)
        # Fresh per read-back: no earlier write (of this run or another) can hold them.
        tag = secrets.token_hex(4)
        controls = [f"{client.id_prefix}-control-{tag}-{n}" for n in range(CONTROL_READS)]
        found = await client.stored_ids(controls)
        if found:
            raise UnverifiableRead(
                f"{template.describe()} answered 2xx for {len(found)} of {CONTROL_READS} ids "
                f"never written ({', '.join(sorted(found))}): after the restart it cannot tell "
                "a stored id from a lost one, so the acknowledged writes could not be checked "
                "(it must answer 404 for an id that is not stored)"
            )
        return await client.stored_ids(ids) if ids else set()
    except httpx.HTTPError as exc:
        raise ReadBackError(describe_read_error(exc)) from exc


def describe_read_error(exc: httpx.HTTPError) -> str:
    """One line for a failed read: the request, then its status or how it failed."""
    try:
        request = f"{exc.request.method} {exc.request.url.raw_path.decode('ascii', 'replace')}"
    except RuntimeError:  # an error raised before a request was built
        request = "a read"
    if isinstance(exc, httpx.HTTPStatusError):
        return (
            f"{request} answered HTTP {exc.response.status_code} "
            "(a read must answer 2xx when the id is stored, 404 when it is not)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"{request} timed out after {READ_TIMEOUT_S:g} s ({type(exc).__name__})"
    outcome, detail = classify(exc)
    detail = " ".join(detail.split())  # httpx's text may span lines
    return f"{request} failed: {outcome.value}" + (f" ({detail})" if detail else "")


async def judge_writes(f: Findings, ctx: Context, service: Service, ledger: Ledger) -> int:
    """Restart on the service's volume; every acknowledged write must be there. Returns the
    loss (0 also when nothing could be checked: see :func:`check_writes`).

    .. versionadded:: 0.1
    """
    return await check_writes(f, ctx, service, ledger) or 0


async def check_writes(f: Findings, ctx: Context, service: Service, ledger: Ledger) -> int | None:
    """:func:`judge_writes`, returning None when the writes were not checked: no items, no
    acknowledged write, or a read-back that failed (a problem in ``f`` says why).

    .. versionadded:: 0.1
    """
    acked = ledger.acked_ids()
    if not ctx.workload.has_items or not acked:
        return None
    try:
        stored = await read_back(ctx, service.volume, acked)
    except UnverifiableRead as exc:
        f.problem(
            f"after a restart on the same volume the {len(acked)} acknowledged writes could "
            f"not be checked: {exc}"
        )
        return None
    except READ_ERRORS as exc:
        f.problem(
            f"after a restart on the same volume the stored writes could not be read "
            f"({ctx.workload.reads_from}): {exc}"
        )
        return None
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

"""The contract preflight: before any scenario, find out what the image really honours.

One container of the image is started (and must become ready), then each capability the
chosen scenarios rely on is tried side by side, in about a second:

- ``work``: a request for 0 s answers 2xx.
- ``long work``: a request for 1 s takes about 1 s, and one for 0 s does not (an endpoint that
  ignores the duration parameter, or reads another one, fails here: its "long" requests would
  finish before the stop and test nothing).
- ``items``: a write is acknowledged with its id and then listed; with write and read
  templates, a write is acknowledged (2xx), the read finds its id (2xx) and answers 404 for
  an id never written.
- ``stream``: the stream path answers 2xx and is still streaming a second later.
- ``admin readiness``: readiness answered 200 on the admin port.

The container is then killed and removed. The result, a
:class:`~graceful.harness.contract.Contract`, decides which scenarios run (a scenario whose
needs are missing is SKIPPED, with the reason) and is printed above the verdict table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import httpx

from graceful.harness.container import ImageInfo
from graceful.harness.context import Context, Progress, Service, Settings
from graceful.harness.contract import Capability, Check, Contract
from graceful.harness.engine import Engine
from graceful.harness.load import Ledger, LoadClient, RequestOutcome, classify
from graceful.harness.readiness import start_ready
from graceful.harness.streams import StreamOutcome, StreamRecord, follow, stream_client
from graceful.harness.workload import Workload

__all__ = ["LONG_PROBE_MS", "STREAM_HOLD_S", "preflight"]

#: The long request the preflight times.
LONG_PROBE_MS = 1000
#: How long a stream must stay open to count as one.
STREAM_HOLD_S = 1.0
# A long request must take at least this share of what it asked for; a request for 0 s must
# take less than half of what the long one took.
_LONG_ENOUGH = 0.8
_HINT = "judge it with --work-url, e.g. --work-url '/slow?s={seconds}'"


async def preflight(
    engine: Engine,
    image: ImageInfo,
    settings: Settings,
    needs: Collection[Capability],
    *,
    progress: Progress | None = None,
) -> Contract:
    """Start the image once and try the capabilities in ``needs`` (``work`` always).

    Args:
        engine: the connected engine.
        image: the image under test.
        settings: the run's settings (the workload says what to try).
        needs: what the chosen scenarios rely on.
        progress: called with a short status text.

    Returns:
        What was established, one check per capability tried.

    Raises:
        ContainerError: the image did not start, or did not become ready (or has no admin
            server where one is expected: said within seconds).

    .. versionadded:: 0.1
    """
    ctx = Context(engine, image, settings, scenario="preflight", progress=progress)
    try:
        # Not ctx.start: an image without the admin server it is judged by is said so in
        # seconds, not after the startup timeout.
        service = await start_ready(ctx, what="the image to check its contract")
        ctx.step("checking what the image honours")
        wanted = {Capability.WORK, *needs}
        checks: dict[Capability, Check] = {}
        tasks = []
        if wanted & {Capability.WORK, Capability.LONG_WORK}:
            tasks.append(_check_work(ctx, service, Capability.LONG_WORK in wanted))
        if Capability.ITEMS in wanted:
            tasks.append(_check_items(ctx, service))
        if Capability.STREAM in wanted:
            tasks.append(_check_stream(ctx, service))
        for found in await asyncio.gather(*tasks):
            checks.update((c.capability, c) for c in found)
        if Capability.ADMIN_READY in wanted:
            checks[Capability.ADMIN_READY] = _check_admin(ctx, service)
        order = list(Capability)
        return Contract({c: checks[c] for c in sorted(checks, key=order.index)})
    finally:
        await ctx.close()


async def _check_work(ctx: Context, service: Service, long: bool) -> list[Check]:
    w = ctx.workload
    ledger = Ledger()
    async with ctx.client(service, ledger, timeout=10.0) as client:
        short = await client.work(0)
        if not short.ok:
            what = f"GET {w.work_target(0)} failed ({_outcome(short.outcome, short.status)})"
            checks = [Check(Capability.WORK, False, what)]
            if long:
                checks.append(Check(Capability.LONG_WORK, False, f"{what}; {_HINT}"))
            return checks
        short_s = short.answered - short.sent
        work = Check(Capability.WORK, True, f"GET {w.work_target(0)} answered {short.status}")
        if not long:
            return [work]
        asked = w.long_ms(LONG_PROBE_MS)
        record = await client.work(asked)
    took = record.answered - record.sent
    target = w.work_target(asked)
    if not record.ok:
        detail = f"GET {target} failed ({_outcome(record.outcome, record.status)}); {_HINT}"
        return [work, Check(Capability.LONG_WORK, False, detail)]
    if took < asked / 1000 * _LONG_ENOUGH:
        detail = (
            f"GET {target} took {took:.2f} s, not about {asked / 1000:g} s: the endpoint does not "
            f"hold a request for the time asked; {_HINT}"
        )
        return [work, Check(Capability.LONG_WORK, False, detail)]
    if short_s >= took / 2:
        detail = (
            f"GET {w.work_target(0)} took {short_s:.2f} s and GET {target} {took:.2f} s: the "
            f"endpoint does not read the duration it is asked for; {_HINT}"
        )
        return [work, Check(Capability.LONG_WORK, False, detail)]
    detail = f"GET {target} took {took:.2f} s, GET {w.work_target(0)} {short_s:.2f} s"
    return [work, Check(Capability.LONG_WORK, True, detail)]


async def _check_items(ctx: Context, service: Service) -> list[Check]:
    w = ctx.workload
    if not w.has_items:
        return [
            Check(Capability.ITEMS, False, "no items path (--items-path) and no --write/--read")
        ]
    async with ctx.client(service, Ledger(), timeout=10.0) as client:
        write = await client.write(f"{ctx.engine.run_id}-preflight")
        if not write.acked:
            what = _outcome(write.outcome, write.status)
            shown = w.write or f'POST {w.items_path} {{"id": ...}}'
            if not w.write and write.status is not None and 200 <= write.status < 300:
                what = f"answered {write.status} without the id it was sent"
            detail = f"{shown} was not acknowledged ({what})"
            return [Check(Capability.ITEMS, False, detail)]
        if w.read_template is not None:
            return [await _check_read(client, w, write.item_id or "")]
        try:
            stored = await client.stored_ids()
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            detail = f'GET {w.items_path} did not list {{"ids": [...]}} ({type(exc).__name__})'
            return [Check(Capability.ITEMS, False, detail)]
    if write.item_id not in stored:
        detail = f"GET {w.items_path} did not list the id just acknowledged"
        return [Check(Capability.ITEMS, False, detail)]
    detail = f"POST {w.items_path} acknowledged an id and GET {w.items_path} listed it"
    return [Check(Capability.ITEMS, True, detail)]


async def _check_read(client: LoadClient, w: Workload, written: str) -> Check:
    """The read template finds the id just written (2xx) and not one never written (404): a
    read that answers 2xx for anything would find every write, lost or not."""
    read, never = w.read, f"{written}-never-written"
    try:
        found = await client.has(written)
        if not found:
            detail = f"{read} answered 404 for the id just acknowledged ({written})"
            return Check(Capability.ITEMS, False, detail)
        if await client.has(never):
            detail = (
                f"{read} answered 2xx for an id never written ({never}): it cannot tell a "
                "stored id from a lost one (it must answer 404 when the id is not stored)"
            )
            return Check(Capability.ITEMS, False, detail)
    except httpx.HTTPStatusError as exc:
        detail = (
            f"{read} answered {exc.response.status_code} (expected 2xx, or 404 when not stored)"
        )
        return Check(Capability.ITEMS, False, detail)
    except httpx.HTTPError as exc:
        detail = f"{read} failed ({classify(exc)[0].value})"
        return Check(Capability.ITEMS, False, detail)
    detail = (
        f"{w.write} was acknowledged, {read} found the id and answered 404 for one never written"
    )
    return Check(Capability.ITEMS, True, detail)


async def _check_stream(ctx: Context, service: Service) -> list[Check]:
    w = ctx.workload
    if not w.has_stream:
        # Named by every source it can come from: the table, pytest's option, the CLI's.
        why = "no stream path (stream_path in [tool.graceful.harness], --graceful-stream-path"
        return [Check(Capability.STREAM, False, f"{why} or --stream-path)")]
    record = StreamRecord()
    opened = asyncio.Event()
    async with stream_client(service.main_port) as client:
        task = asyncio.create_task(follow(client, w.stream_path, record, opened=opened))
        try:
            async with asyncio.timeout(10.0):
                await opened.wait()
            started = time.monotonic()
            await asyncio.wait([task], timeout=STREAM_HOLD_S)
        except TimeoutError:
            started = time.monotonic()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    target = f"GET {w.stream_path}"
    if record.opened is None:
        detail = f"{target} did not answer within 10 s ({record.detail or 'no response head'})"
        return [Check(Capability.STREAM, False, detail)]
    if record.outcome is StreamOutcome.FAILED:
        return [Check(Capability.STREAM, False, f"{target} answered {record.detail}")]
    if record.outcome is not StreamOutcome.OPEN:
        lasted = (record.ended or started) - record.opened
        detail = (
            f"{target} ended by itself after {lasted:.2f} s ({record.outcome.value}): it is not "
            "a stream that stays open until the stop"
        )
        return [Check(Capability.STREAM, False, detail)]
    kind = "server-sent events" if record.sse else record.content_type or "no content type"
    detail = (
        f"{target} answered {record.status} ({kind}) and was still streaming after "
        f"{STREAM_HOLD_S:g} s ({record.received} bytes)"
    )
    return [Check(Capability.STREAM, True, detail)]


def _check_admin(ctx: Context, service: Service) -> Check:
    w = ctx.workload
    if w.admin_port is None:
        return Check(Capability.ADMIN_READY, False, "no admin port (--admin-port off)")
    if not w.has_admin:
        where = "a work request" if w.ready_on == "work" else f"{w.readiness_path} on the main port"
        return Check(Capability.ADMIN_READY, False, f"readiness is {where}")
    detail = f"GET {w.readiness_path} on admin port {w.admin_port} answered 200"
    return Check(Capability.ADMIN_READY, True, detail)


def _outcome(outcome: RequestOutcome, status: int | None) -> str:
    return f"HTTP {status}" if status is not None else outcome.value

"""``graceful harness soak``: one image, many rounds of faults under load, one ledger.

Each round starts the image on the same state volume, puts steady load on it (short work
requests and writes), sends two requests of 0.5 s to hold across the fault (when the image
holds a request for the time asked), then applies a fault drawn from a seeded sequence:

- ``stop``: ``docker stop -t <stop timeout>``.
- ``stop-short``: ``docker stop -t 3``, the service told the same budget
  (``GRACEFUL_STOP_TIMEOUT``), as with a short grace period.
- ``kill``: ``docker kill`` (SIGKILL).
- ``signal-storm``: the image's stop signal five times at once.
- ``pause-kill``: ``docker pause``, then ``docker kill`` (a frozen node, then fenced).
- ``power-loss``: SIGKILL and everything not fsynced dropped at once, on a FUSE volume
  (:mod:`graceful.harness.scenarios.power`; only where FUSE and root are available).

The next round's container checks the previous fault: every write acknowledged so far, in any
round, must still be listed. A round fails on an acknowledged write lost, an accepted request
that failed (sent before a stop began and not answered 2xx; for the kills, one that failed
before the kill), or an exit code the fault does not explain (anything but 0 after a stop,
0 or 5 after a storm, 137 after a kill). Requests in flight when a kill ends the container are
*cut*: counted, never failures. The sequence cycles through the chosen faults in a shuffled
order, a new shuffle per cycle, so every fault type gets its share of rounds and a seed
replays the same sequence. How a round is judged, and the report:
:mod:`graceful.harness.soak_report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx

from graceful.exceptions import GracefulError
from graceful.harness.container import ContainerError, ImageInfo, StopResult, stop_signal_of
from graceful.harness.context import (
    HANG_GUARD_S,
    Context,
    Progress,
    Service,
    Settings,
    gather_bounded,
)
from graceful.harness.contract import Capability
from graceful.harness.durability import READ_TIMEOUT_S, ReadBackError, checked_stored_ids
from graceful.harness.engine import Engine, remove
from graceful.harness.load import Kind, Ledger, LoadClient
from graceful.harness.preflight import preflight
from graceful.harness.scenarios.power import (
    PowerVolume,
    describe_cut,
    power_cut,
    power_unavailable,
    power_volume,
)
from graceful.harness.soak_report import (
    FAULTS,
    Fault,
    RoundResult,
    SoakReport,
    fault_sequence,
    judge_round,
)

__all__ = [
    "FAULTS",
    "Fault",
    "RoundResult",
    "SoakOptions",
    "SoakReport",
    "choose_faults",
    "fault_sequence",
    "judge_round",
    "run_soak",
    "soak_and_report",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakOptions:
    """How a soak runs.

    Args:
        rounds: how many faults.
        seed: the seed of the fault sequence (the same seed replays it).
        faults: the fault types to draw from.
        concurrency: steady work requests in flight.
        work_ms: the length of a work request.
        writers: concurrent writers (when the image offers items and a volume).
        round_seconds: load time before each fault, at least.
        min_writes: acknowledged writes to wait for in a round before its fault.
        max_wait: the longest to wait for them beyond ``round_seconds``.
        long_requests: requests of ``long_ms`` sent just before each fault and held across
            it (when the image holds a request for the time asked: ``long work``), so a
            stop always has work in flight to answer.
        long_ms: their length.
        short_timeout: ``docker stop -t`` of ``stop-short``.
        storm: signals of ``signal-storm``.
        pause_seconds: how long ``pause-kill`` keeps the container frozen.

    .. versionadded:: 0.1
    """

    rounds: int
    seed: int
    faults: tuple[Fault, ...] = FAULTS
    concurrency: int = 4
    work_ms: int = 20
    writers: int = 2
    round_seconds: float = 1.0
    min_writes: int = 5
    max_wait: float = 10.0
    long_requests: int = 2
    long_ms: int = 500
    short_timeout: int = 3
    storm: int = 5
    pause_seconds: float = 0.2


def choose_faults(names: str | None, *, volume: bool = True) -> tuple[tuple[Fault, ...], str]:
    """The faults named in a comma-separated list (every one when None, ``power-loss``
    left out where it cannot run, with the reason as the second value).

    Args:
        names: the ``--faults`` option, None for every fault type.
        volume: the workload mounts a state volume (``power-loss`` cuts the power under it).

    Raises:
        ValueError: an unknown name, none at all, or ``power-loss`` named where it cannot
            run (the message says why).

    .. versionadded:: 0.1
    """
    reason = power_unavailable()
    if volume is False:
        reason = "needs a state volume to cut the power under (volume_path, --volume-path)"
    if names is None:
        if reason is None:
            return FAULTS, ""
        every = tuple(f for f in FAULTS if f is not Fault.POWER_LOSS)
        return every, f"power-loss left out: {reason}"
    chosen: list[Fault] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            fault = Fault(name)
        except ValueError:
            known = ", ".join(FAULTS)
            raise ValueError(f"unknown fault {name!r}; known: {known}") from None
        if fault not in chosen:
            chosen.append(fault)
    if not chosen:
        raise ValueError("no fault named")
    if Fault.POWER_LOSS in chosen and reason is not None:
        raise ValueError(f"power-loss cannot run here: it {reason}")
    return tuple(chosen), ""


async def run_soak(
    engine: Engine,
    image: ImageInfo,
    settings: Settings,
    options: SoakOptions,
    *,
    progress: Progress | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
) -> SoakReport:
    """Run the soak: the preflight, then ``options.rounds`` faults on one volume, one ledger.

    Args:
        engine: the connected engine.
        image: the image under test.
        settings: stop timeout, workload and environment, as for the scenarios.
        options: rounds, seed, faults and load.
        progress: called with a short status text as the soak advances.
        on_round: called with each round's result as soon as it is known.

    Raises:
        ContainerError: the image did not start for the preflight.
        PowerLossError: the power-loss volume could not be mounted.

    .. versionadded:: 0.1
    """
    report = SoakReport(image=image.ref, seed=options.seed, faults=options.faults)
    needs = {Capability.ITEMS, Capability.LONG_WORK}
    contract = await preflight(engine, image, settings, needs, progress=progress)
    report.contract = contract.lines()
    if not contract.has(Capability.LONG_WORK):
        why = contract.why_not(Capability.LONG_WORK)
        report.notes.append(f"no request was held across the faults ({why})")
    writes = contract.has(Capability.ITEMS) and bool(settings.workload.volume_path)
    if not writes:
        why = "no volume path" if contract.has(Capability.ITEMS) else "no items endpoint"
        report.notes.append(f"no writes were checked ({why}): only requests were judged")
    sequence = fault_sequence(options.faults, options.rounds, options.seed)
    if Fault.POWER_LOSS in sequence:
        report.notes.append(
            "the state volume was a power-loss volume (FUSE) in every round, so every fault "
            "ran on it"
        )
    ctx = Context(engine, image, settings, scenario="soak", progress=progress, contract=contract)
    try:
        async with _state_volume(ctx, Fault.POWER_LOSS in sequence) as power:
            soak = _Soak(ctx, options, report, writes=writes, power=power)
            await soak.run(sequence, on_round)
    finally:
        await ctx.close()
    return report


@contextlib.asynccontextmanager
async def _state_volume(ctx: Context, power: bool) -> AsyncIterator[PowerVolume | None]:
    if not power:
        yield None
        return
    async with power_volume(ctx) as volume:
        yield volume


class _Soak:
    """One soak's state across rounds: the ledger, the ids found lost, the volume."""

    def __init__(
        self,
        ctx: Context,
        options: SoakOptions,
        report: SoakReport,
        *,
        writes: bool,
        power: PowerVolume | None,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.report = report
        self.writes = writes
        self.power = power
        self.ledger = Ledger()
        self.lost: set[str] = set()

    async def run(
        self, sequence: Sequence[Fault], on_round: Callable[[RoundResult], None] | None
    ) -> None:
        volume = self.power.path if self.power is not None else None
        self._step(0, len(sequence), sequence[0])
        service: Service | None = await self._start(sequence[0], volume)
        for index, fault in enumerate(sequence, 1):
            assert service is not None
            after = sequence[index] if index < len(sequence) else None
            self._step(index, len(sequence), fault)
            try:
                result, service = await self._round(index, fault, service, after)
            except Exception as exc:  # the engine failed: report what ran, stop here
                own = isinstance(exc, GracefulError) and str(exc)  # written for the user
                why = (str(exc) if own else f"{type(exc).__name__}: {exc}").splitlines()[0]
                result = RoundResult(
                    index=index,
                    fault=fault,
                    exit_code=None,
                    stop_seconds=None,
                    problems=(f"the round could not finish: {why}",),
                )
                service = None
            self.report.rounds.append(result)
            if fault is Fault.PAUSE_KILL and result.note:
                self.report.notes.append(f"round {index}: {result.note}")
            if on_round is not None:
                on_round(result)
            if service is None:
                break

    def _step(self, index: int, total: int, fault: Fault) -> None:
        self.ctx.scenario = f"round {max(index, 1)}/{total} ({fault})"

    async def _start(self, fault: Fault | None, volume: str | None) -> Service:
        env = {}
        if fault is Fault.STOP_SHORT:
            env["GRACEFUL_STOP_TIMEOUT"] = str(self.options.short_timeout)
        return await self.ctx.start(volume, env=env)

    async def _round(
        self, index: int, fault: Fault, service: Service, after: Fault | None
    ) -> tuple[RoundResult, Service | None]:
        o, ctx = self.options, self.ctx
        first = len(self.ledger.records)
        client = LoadClient(
            service.main_port,
            workload=ctx.workload,
            ledger=self.ledger,
            timeout=ctx.stop_timeout + HANG_GUARD_S,
            id_prefix=f"{ctx.engine.run_id}-soak-{index}",
        )
        async with client:
            stop_load = asyncio.Event()
            bound = o.round_seconds + o.max_wait + HANG_GUARD_S
            load = [
                asyncio.create_task(
                    client.steady(
                        stop=stop_load,
                        concurrency=o.concurrency,
                        ms=ctx.workload.short_ms(o.work_ms),
                        max_seconds=bound,
                    )
                )
            ]
            if self.writes:
                load.append(
                    asyncio.create_task(
                        client.steady(
                            stop=stop_load, concurrency=o.writers, writes=True, max_seconds=bound
                        )
                    )
                )
            ctx.step("load running")
            await self._load_for_a_while(first, load)
            held = o.long_requests if ctx.contract.has(Capability.LONG_WORK) else 0
            long_ms = ctx.workload.long_ms(o.long_ms)
            longs = [asyncio.create_task(client.work(long_ms, kind=Kind.LONG)) for _ in range(held)]
            if longs:
                await client.settle()  # they reached the server: in flight at the fault
            stop_load.set()
            began = time.monotonic()
            stop, note = await self._apply(fault, service)
            await gather_bounded([*load, *longs])
        await asyncio.to_thread(remove, ctx.engine.client, containers=[service.container.id])
        judged = judge_round(self.ledger.records[first:], fault, began, stop)
        nxt: Service | None = None
        lost: list[str] = []
        problems = list(judged.problems)
        try:
            nxt = await self._start(after, service.volume)
            lost = await self._check(nxt)
        except ReadBackError as exc:  # it came back, but its reads cannot be trusted
            problems.append(f"the acknowledged writes could not be checked: {exc}")
            nxt = None
        except (ContainerError, httpx.HTTPError, KeyError, ValueError) as exc:
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            problems.append(f"the service did not come back on the same volume: {first_line}")
            nxt = None
        if lost:
            why = (
                f"the service acknowledged before fsync ({note})"
                if fault is Fault.POWER_LOSS
                else "the service acknowledged writes before they were durable"
            )
            shown = ", ".join(lost[:5]) + (", …" if len(lost) > 5 else "")
            problems.append(f"{len(lost)} acknowledged writes lost: ids {shown}: {why}")
        result = dataclasses.replace(
            judged, index=index, lost=len(lost), problems=tuple(problems), note=note
        )
        return result, nxt

    async def _load_for_a_while(self, first: int, load: Sequence[asyncio.Task[None]]) -> None:
        o = self.options
        started = time.monotonic()
        while not all(task.done() for task in load):
            elapsed = time.monotonic() - started
            acked = sum(1 for r in self.ledger.records[first:] if r.acked)
            if elapsed >= o.round_seconds and (not self.writes or acked >= o.min_writes):
                return
            if elapsed >= o.round_seconds + o.max_wait:
                return
            await asyncio.sleep(0.05)

    async def _apply(self, fault: Fault, service: Service) -> tuple[StopResult | None, str]:
        """Apply ``fault``; the container's exit (None when it never came) and a note."""
        ctx, container = self.ctx, service.container
        ctx.step(f"applying {fault}")
        if fault is Fault.STOP:
            return await ctx.stop(service), ""
        if fault is Fault.STOP_SHORT:
            return await asyncio.to_thread(container.stop, self.options.short_timeout), ""
        if fault is Fault.POWER_LOSS:
            assert self.power is not None
            stop, cut = await power_cut(ctx, service, self.power)
            return stop, f"the cut {describe_cut(cut)}"
        began = time.monotonic()
        if fault is Fault.SIGNAL_STORM:
            sig = stop_signal_of(container, ctx.image)
            for _ in range(self.options.storm):
                if not await ctx.kill(service, sig):
                    break
            stop = await ctx.wait_exit(service, began, ctx.stop_timeout + 2)
            if stop is not None:
                return stop, ""
            await ctx.kill(service, "SIGKILL")
            return await ctx.wait_exit(service, began, HANG_GUARD_S), f"{sig} storm not obeyed"
        note = ""
        if fault is Fault.PAUSE_KILL:
            import docker.errors

            try:
                await asyncio.to_thread(container.raw.pause)
            except docker.errors.APIError as exc:
                # The cgroup freezer gives up on a task it cannot freeze (one waiting on a
                # FUSE request, say): the engine's failure, not the service's.
                note = f"docker pause failed, killed without it: {exc.explanation or exc}"
            else:
                await asyncio.sleep(self.options.pause_seconds)
            began = time.monotonic()
        await ctx.kill(service, "SIGKILL")
        return await ctx.wait_exit(service, began, HANG_GUARD_S), note

    async def _check(self, service: Service) -> list[str]:
        """Every write acknowledged so far must be there (listed, or found by the read
        template, which must also answer 404 for ids never written); returns those newly
        missing.

        Raises:
            ReadBackError: a read failed, or found an id never written
                (:func:`~graceful.harness.durability.checked_stored_ids`).
        """
        if not self.writes:
            return []
        acked = self.ledger.acked_ids()
        async with self.ctx.client(service, Ledger(), timeout=READ_TIMEOUT_S) as reader:
            stored = await checked_stored_ids(reader, acked)
        missing = [i for i in acked if i not in stored and i not in self.lost]
        self.lost.update(missing)
        return missing


async def soak_and_report(
    engine: Engine,
    image: ImageInfo,
    settings: Settings,
    options: SoakOptions,
    *,
    status: Progress,
    line: Callable[[str], None],
    json_path: str | None = None,
    left_out: str = "",
) -> int:
    """``graceful harness soak``: the seed first (so even an interrupted soak can be
    replayed), a line per round, then the table on stdout (and the JSON report).

    Args:
        engine: the connected engine.
        image: the image under test.
        settings: stop timeout, workload and environment.
        options: rounds, seed, faults and load.
        status: called with a short status text as the soak advances.
        line: prints a line that stays (on stderr).
        json_path: where to write the JSON report, if anywhere.
        left_out: why a fault type was left out ("" for none).

    Returns:
        The exit code: 0 when every round passed, else 1.

    .. versionadded:: 0.1
    """
    line(f"graceful harness soak: {image.ref}, seed {options.seed}, {options.rounds} rounds")
    if left_out:
        line(f"graceful harness soak: {left_out}")
    try:
        report = await run_soak(
            engine,
            image,
            settings,
            options,
            progress=status,
            on_round=lambda result: line(result.line(options.rounds)),
        )
    except (ContainerError, GracefulError) as exc:
        line(f"graceful harness: the soak could not run: {exc}")
        return 1
    if left_out:
        report.notes.append(left_out)
    sys.stdout.write(report.table())
    if json_path:
        report.write_json(json_path)
        print(f"JSON report: {json_path}")
    return report.exit_code()

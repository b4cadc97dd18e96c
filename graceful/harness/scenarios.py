"""Scenarios: each starts the image, stops or kills it a particular way, and judges the
outcome from what clients saw, the exit code, the logs and the state left on the volume.

Every scenario is a frozen dataclass whose fields are its knobs (defaults follow the example
HTTP contract); :func:`run_scenarios` runs a list of them against one image and returns a
:class:`~graceful.harness.report.Report`. Findings are plain sentences that say what went
wrong and, where the harness can tell, why (a shell-form ``CMD``, a PID 1 without a SIGTERM
handler, a drain not bounded by the stop timeout, writes acknowledged before they were
durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx

from graceful.harness.engine import (
    Container,
    ContainerError,
    Engine,
    ImageInfo,
    Pid1,
    StopResult,
    log_lines,
    signal_number,
    stop_signal_of,
)
from graceful.harness.load import (
    PROBE_SCRIPT,
    Kind,
    Ledger,
    LoadClient,
    ProbeEvent,
    Workload,
    describe_failures,
    parse_probe_output,
)
from graceful.harness.report import NOTE, Report, ScenarioResult

__all__ = [
    "SCENARIOS",
    "KillUnderLoad",
    "Scenario",
    "Settings",
    "SignalStorm",
    "Signals",
    "StopDuringStartup",
    "StopIdle",
    "StopOverBudget",
    "StopUnderLoad",
    "run_scenarios",
]

Progress = Callable[[str], None]

# Stop budgets end a little before SIGKILL (the runtime keeps a safety margin); an exit this
# close to the timeout after a SIGKILL means the whole timeout was waited.
_KILL_SLACK_S = 0.5
_HANG_GUARD_S = 30.0
_PROBE_INTERVAL_S = 0.02
_TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What every scenario of a run shares.

    Args:
        stop_timeout: seconds ``docker stop`` waits before SIGKILL (``-t``); also passed to
            the service as ``GRACEFUL_STOP_TIMEOUT``.
        workload: ports and paths of the service's HTTP contract.
        env: extra environment for the service's containers.
        startup_timeout: how long a container may take to become ready.
        probe_image: image (with ``python3``) for the connection prober that shares the
            service's network namespace; by default the image under test, then
            ``graceful-base:bookworm``, then a prober on the host.
        init: run the service under Docker's init (``--init``) instead of as PID 1.

    .. versionadded:: 0.1
    """

    stop_timeout: int = 10
    workload: Workload = field(default_factory=Workload)
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = 60.0
    probe_image: str | None = None
    init: bool = False


@dataclass(slots=True)
class Service:
    """A started container of the image under test, with its host ports and volume."""

    container: Container
    volume: str
    main_port: int
    admin_port: int | None
    pid1: Pid1 | None = None


class Findings:
    """Collects problems (which fail a scenario) and notes (which do not)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def note(self, text: str) -> None:
        self.notes.append(NOTE + text)

    def result(
        self,
        name: str,
        *,
        stop: StopResult | None = None,
        ledger: Ledger | None = None,
        lost: int = 0,
    ) -> ScenarioResult:
        counts = ledger.counts() if ledger is not None else None
        return ScenarioResult(
            name=name,
            passed=not self.problems,
            exit_code=stop.exit_code if stop is not None else None,
            stop_seconds=stop.seconds if stop is not None else None,
            sent=counts.sent if counts else 0,
            ok=counts.ok if counts else 0,
            failed=counts.failed if counts else 0,
            acked=len(ledger.acked_ids()) if ledger is not None else 0,
            lost=lost,
            findings=tuple(self.problems + self.notes),
        )


class Context:
    """One scenario's access to the engine; removes its containers and volumes at the end.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        engine: Engine,
        image: ImageInfo,
        settings: Settings,
        *,
        scenario: str,
        progress: Progress | None = None,
    ) -> None:
        self.engine = engine
        self.image = image
        self.settings = settings
        self.workload = settings.workload
        self.scenario = scenario
        self._progress = progress
        self._containers: list[Container] = []
        self._volumes: list[str] = []

    @property
    def stop_timeout(self) -> int:
        return self.settings.stop_timeout

    def step(self, text: str) -> None:
        """Report progress."""
        if self._progress is not None:
            self._progress(f"{self.scenario}: {text}")

    async def start(self, volume: str | None = None, *, ready: bool = True) -> Service:
        """Start the image on a (new or given) volume; wait until it is ready."""
        w = self.workload
        if volume is None:
            volume = await asyncio.to_thread(self.engine.volume)
            self._volumes.append(volume)
        env = {"GRACEFUL_STOP_TIMEOUT": str(self.stop_timeout), "PORT": str(w.port)}
        if w.admin_port:
            env["ADMIN_PORT"] = str(w.admin_port)
        env.update(self.settings.env)
        ports = [w.port] + ([w.admin_port] if w.admin_port else [])
        self.step("starting a container")
        container = await asyncio.to_thread(
            self.engine.run,
            self.image.ref,
            ports=ports,
            env=env,
            volumes={volume: w.volume_path} if w.volume_path else None,
            init=self.settings.init,
        )
        self._containers.append(container)
        service = Service(
            container=container,
            volume=volume,
            main_port=container.host_port(w.port),
            admin_port=container.host_port(w.admin_port) if w.admin_port else None,
        )
        if ready:
            await self.wait_ready(service)
            service.pid1 = await asyncio.to_thread(container.pid1)
        return service

    async def wait_ready(self, service: Service) -> None:
        """Poll readiness (``/readyz``, or the work path without an admin port) until 200.

        Raises:
            ContainerError: the container exited, or was not ready in time.
        """
        w = self.workload
        if w.has_admin and service.admin_port is not None:
            url = f"http://127.0.0.1:{service.admin_port}{w.ready_path}"
        else:
            url = f"http://127.0.0.1:{service.main_port}{w.work_path}?ms=0"
        self.step("waiting until ready")
        deadline = time.monotonic() + self.settings.startup_timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if not await asyncio.to_thread(lambda: service.container.running):
                    logs = await asyncio.to_thread(service.container.logs)
                    raise ContainerError(
                        f"the container exited with code {service.container.exit_code} before "
                        f"it was ready; its last log lines:\n{_tail(logs)}"
                    )
                if time.monotonic() > deadline:
                    logs = await asyncio.to_thread(service.container.logs)
                    raise ContainerError(
                        f"the container was not ready within {self.settings.startup_timeout} s "
                        f"({url} never answered 200); its last log lines:\n{_tail(logs)}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self, service: Service) -> StopResult:
        """``docker stop -t stop_timeout``, timed."""
        self.step(f"docker stop -t {self.stop_timeout}")
        return await asyncio.to_thread(service.container.stop, self.stop_timeout)

    async def kill(self, service: Service, sig: str) -> bool:
        """``docker kill --signal sig``; False when the container had already exited."""
        return await asyncio.to_thread(service.container.kill, sig)

    async def wait_exit(
        self, service: Service, started: float, timeout: float
    ) -> StopResult | None:
        """Wait for the container to exit, timed from ``started``; None when it did not."""
        return await asyncio.to_thread(service.container.wait_exit, started, timeout)

    async def logs(self, service: Service) -> str:
        """The container's output."""
        return await asyncio.to_thread(service.container.logs)

    def client(self, service: Service, ledger: Ledger, *, timeout: float = 30.0) -> LoadClient:
        """A load client for the service's published HTTP port."""
        return LoadClient(
            service.main_port,
            workload=self.workload,
            ledger=ledger,
            timeout=timeout,
            id_prefix=f"{self.engine.run_id}-{self.scenario}",
        )

    async def probe(self, service: Service) -> Prober:
        """Start the connection prober against ``service`` (see :class:`Prober`)."""
        prober = Prober(self, service)
        await prober.start()
        return prober

    async def stored_after_restart(self, volume: str) -> set[str]:
        """Start a new container on ``volume``, read the stored ids, stop it.

        Raises:
            ContainerError: the new container did not come up.
            httpx.HTTPError: reading the items failed.
        """
        self.step("restarting on the same volume")
        service = await self.start(volume)
        try:
            async with self.client(service, Ledger()) as client:
                return await client.stored_ids()
        finally:
            await self.kill(service, "SIGKILL")

    async def close(self) -> None:
        """Remove this scenario's containers and volumes."""
        await asyncio.to_thread(self.remove_now)

    def remove_now(self) -> None:
        """Remove this scenario's containers and volumes (blocking)."""
        import docker.errors

        client = self.engine.client
        for c in self._containers:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(c.id, force=True)
        for v in self._volumes:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_volume(v, force=True)

    def track(self, container: Container) -> None:
        """Remove ``container`` with this scenario's own (for sidecars started elsewhere)."""
        self._containers.append(container)


class Prober:
    """Opens fresh connections to the service's port and ``/readyz`` every 20 ms.

    It runs in a sidecar container sharing the service's network namespace, so it reaches the
    service's own listener: from the host, Docker's userland proxy accepts every connection
    and resets it when the service refuses, which hides the difference between refused and
    reset. When no image with ``python3`` is at hand it runs on the host against the published
    ports and says so.
    """

    def __init__(self, context: Context, service: Service) -> None:
        self.context = context
        self.service = service
        self.where = "none"
        self._sidecar: Container | None = None
        self._process: asyncio.subprocess.Process | None = None

    def _args(self, port: int, admin: int) -> list[str]:
        w = self.context.workload
        seconds = self.context.stop_timeout + _HANG_GUARD_S
        return [
            str(port),
            str(admin if w.has_admin else 0),
            w.work_path,
            w.ready_path or "/",
            str(_PROBE_INTERVAL_S),
            str(seconds),
        ]

    async def start(self) -> None:
        ctx = self.context
        candidates = [ctx.settings.probe_image] if ctx.settings.probe_image else []
        candidates += [ctx.image.ref, "graceful-base:bookworm"]
        for image in dict.fromkeys(candidates):
            sidecar = await asyncio.to_thread(self._start_sidecar, image)
            if sidecar is not None:
                self._sidecar, self.where = sidecar, "netns"
                return
        # No python3 in any candidate image: probe from the host through the published ports.
        admin = self.service.admin_port or 0
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROBE_SCRIPT,
            *self._args(self.service.main_port, admin),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.where = "host"

    def _start_sidecar(self, image: str) -> Container | None:
        import docker.errors

        ctx, w = self.context, self.context.workload
        try:
            sidecar = ctx.engine.run(
                image,
                entrypoint=["python3", "-c", PROBE_SCRIPT],
                command=self._args(w.port, w.admin_port),
                network_mode=f"container:{self.service.container.id}",
                healthcheck=False,
            )
        except docker.errors.APIError:
            return None
        ctx.track(sidecar)
        # Wait for its first line, so the prober is known to run before the stop begins.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if parse_probe_output(sidecar.logs()):
                return sidecar
            if not sidecar.running:
                return None
            time.sleep(0.02)
        return None

    async def finish(self) -> list[ProbeEvent]:
        """Stop the prober and return its events."""
        if self._sidecar is not None:
            sidecar = self._sidecar
            await asyncio.to_thread(sidecar.kill, "SIGKILL")
            return parse_probe_output(await asyncio.to_thread(sidecar.logs))
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            out, _ = await self._process.communicate()
            return parse_probe_output(out.decode())
        return []


# --- judging ---------------------------------------------------------------------------------


def judge_exit(
    f: Findings,
    stop: StopResult,
    *,
    timeout: int,
    image: ImageInfo,
    pid1: Pid1 | None,
    sig: str,
    expected: Iterable[int] = (0,),
    prefix: str = "",
) -> None:
    """Add findings for an exit code that is not one of ``expected``."""
    code = stop.exit_code
    if code in set(expected):
        return
    if code == 137 and not stop.oom_killed and stop.seconds >= timeout - _KILL_SLACK_S:
        f.problem(prefix + sigkill_diagnosis(timeout=timeout, image=image, pid1=pid1, sig=sig))
        return
    f.problem(prefix + describe_exit(code, stop))


def sigkill_diagnosis(
    *, timeout: int, image: ImageInfo, pid1: Pid1 | None, sig: str, head: str | None = None
) -> str:
    """Why a container ended in SIGKILL after the whole stop timeout (or, with ``head``,
    did not exit after a signal), as precisely as the image config and PID 1's signal masks
    allow."""
    if head is None:
        head = f"exited 137 after the full {timeout} s timeout: "
        never = f"the process never handled {sig} (docker stop sent {sig}, then SIGKILL)"
    else:
        never = f"the process never handled {sig}"
    number = _signal_number_or_none(sig)
    if image.shell_form:
        which = (
            "ENTRYPOINT" if image.entrypoint and image.entrypoint[0:1] == image.argv[0:1] else "CMD"
        )
        return (
            f"{head}{never}: the image's {which} is in shell form ({_argv_text(image.argv)}), so "
            f"/bin/sh is PID 1 and does not forward {sig} to the server; use the exec form "
            f'({which} ["python3", "app.py"]) or `exec` the server'
        )
    if pid1 is not None and pid1.is_shell:
        return (
            f"{head}{never}: PID 1 is a shell ({pid1.cmdline}) that does not forward signals; "
            "`exec` the server at the end of the script, or run the container with --init"
        )
    if pid1 is not None and number is not None:
        handles = pid1.handles(number)
        if handles is True:
            return (
                f"{head}PID 1 ({pid1.cmdline}) handles {sig} but did not exit in time: its "
                "drain is not bounded by the stop timeout (work longer than the budget is waited "
                "for instead of cut)"
            )
        if handles is False:
            if pid1.ignored is not None and number in pid1.ignored:
                return f"{head}{never}: PID 1 ({pid1.cmdline}) ignores {sig} (SIG_IGN)"
            return (
                f"{head}{never}: PID 1 ({pid1.cmdline}) installs no {sig} handler, and the kernel "
                "drops signals with the default action sent to PID 1; handle it (graceful.run "
                "does) or run the container with --init"
            )
    return (
        f"{head}{never} (shell-form CMD? a wrapper that does not forward signals? "
        "no handler as PID 1?)"
    )


async def wait_signalled_exit(
    f: Findings, ctx: Context, service: Service, started: float, *, sig: str, prefix: str = ""
) -> StopResult | None:
    """Wait for the exit a signal asked for (the stop timeout, plus a little); when it does
    not come, say why and kill the container."""
    limit = ctx.stop_timeout + 2
    stop = await ctx.wait_exit(service, started, limit)
    if stop is not None:
        return stop
    signame = sig.rsplit(" ", 1)[-1]
    f.problem(
        prefix
        + sigkill_diagnosis(
            timeout=ctx.stop_timeout,
            image=ctx.image,
            pid1=service.pid1,
            sig=signame,
            head=f"did not exit within {limit} s of {sig}: ",
        )
    )
    await ctx.kill(service, "SIGKILL")
    return None


def describe_exit(code: int, stop: StopResult) -> str:
    """Plain words for an exit code that is not the expected one."""
    after = f"after {stop.seconds:.2f} s"
    if code == 137:
        if stop.oom_killed:
            return f"exited 137 {after}: the kernel's OOM killer ended it"
        return f"exited 137 (SIGKILL) {after}, before the stop timeout: something else killed it"
    if code == 143:
        return (
            f"exited 143 {after}: the process died of SIGTERM's default action instead of "
            "handling it (not PID 1, e.g. under --init or a forwarding shell, or a server that "
            "re-raises the signal); handle SIGTERM and exit 0"
        )
    if code == 130:
        return f"exited 130 {after}: the process died of SIGINT (KeyboardInterrupt) unhandled"
    if code == 3:
        return f"exited 3 {after}: the service reports in-flight work was cut at its deadline"
    if code == 4:
        return f"exited 4 {after}: a shutdown hook failed, state may not have been flushed"
    if code == 5:
        return f"exited 5 {after}: forced exit by a repeated signal"
    if code == 1:
        return f"exited 1 {after}: the service failed during the stop"
    return f"exited {code} {after}"


def judge_inflight(f: Findings, ledger: Ledger, stop_began: float, *, prefix: str = "") -> None:
    """Every request sent before the stop began must have been answered with 2xx."""
    inflight = ledger.select((Kind.WORK, Kind.LONG, Kind.WRITE), sent_before=stop_began)
    cut = [r for r in inflight if not r.ok]
    if cut:
        f.problem(
            f"in-flight requests were cut ({len(cut)} of {len(inflight)}: {describe_failures(cut)})"
        )
    else:
        longs = [r for r in inflight if r.kind is Kind.LONG]
        f.note(
            f"all {len(inflight)} requests sent before the stop were answered ({len(longs)} long)"
        )


def judge_connections(
    f: Findings,
    events: Sequence[ProbeEvent],
    *,
    stop_began: float,
    exited: float,
    where: str,
    check_ready: bool,
) -> None:
    """Readiness must go 503 before the listener closes; new connections must then be refused,
    never accepted and reset."""
    during = [e for e in events if stop_began <= e.t <= exited]
    main = [e for e in during if e.kind == "main"]
    ready = [e for e in during if e.kind == "ready"]
    closed_at = next((e.t for e in main if e.outcome != "answered"), None)
    if check_ready:
        went_unready = [e for e in ready if e.outcome == "answered" and e.status != 200]
        if not went_unready:
            f.problem(
                "readiness never went 503 during the stop (/readyz polled every "
                f"{_PROBE_INTERVAL_S * 1000:.0f} ms): load balancers keep routing here until "
                "connections fail"
            )
        else:
            late = [
                e for e in ready if closed_at is not None and e.t > closed_at and e.status == 200
            ]
            if late:
                f.problem(
                    "/readyz still answered 200 after the listener had closed: readiness must "
                    "go 503 first"
                )
            else:
                f.note(
                    f"/readyz went {went_unready[0].status} "
                    f"{went_unready[0].t - stop_began:.3f} s after the stop began"
                )
    if where == "host":
        f.note(
            "new connections probed through Docker's userland proxy (no python3 image for an "
            "in-container prober): refused and reset cannot be told apart"
        )
        return
    bad = [e for e in main if e.outcome in ("reset", "closed")]
    refused = sum(1 for e in main if e.outcome == "refused")
    if len(bad) >= 2:
        f.problem(
            f"new connections were accepted then reset after the stop began ({len(bad)} of "
            f"{len(main)} probes; {refused} refused): a listener stayed open with nobody "
            "serving it; close it so connections are refused"
        )
    elif bad:
        f.note("one new connection arriving as the listener closed was reset (backlog race)")
    elif refused:
        f.note(f"new connections after the listener closed were refused ({refused} probes)")


def judge_report_events(f: Findings, logs: str, workload: Workload, *, strict: bool) -> None:
    """One stop, one summary: more than one ``shutdown.report`` means the stop ran twice."""
    if not workload.report_event:
        return
    n = sum(1 for _ in log_lines(logs, f'"{workload.report_event}"'))
    if n > 1:
        f.problem(
            f"the shutdown ran {n} times ({n} {workload.report_event} log lines): repeated "
            "signals re-entered the stop"
        )
    elif n == 0 and strict:
        f.note(f"no {workload.report_event} log line (the stop's summary is not logged)")


def judge_traceback(f: Findings, logs: str, *, fail: bool = True) -> None:
    """A traceback in the logs during a stop is a problem (or a note)."""
    if _TRACEBACK not in logs:
        return
    lines = logs[logs.rindex(_TRACEBACK) :].splitlines()
    last = next(
        (ln.strip() for ln in lines[1:] if ln and not ln.startswith((" ", "\t"))), "an error"
    )
    text = f"a traceback was logged: {last}"
    if fail:
        f.problem(text)
    else:
        f.note(text)


async def judge_writes(f: Findings, ctx: Context, volume: str, ledger: Ledger) -> int:
    """Restart on the same volume; every acknowledged write must be there. Returns the loss."""
    acked = ledger.acked_ids()
    if not ctx.workload.has_items or not acked:
        return 0
    try:
        stored = await ctx.stored_after_restart(volume)
    except (ContainerError, httpx.HTTPError, KeyError, ValueError) as exc:
        f.problem(f"after a restart on the same volume the stored items could not be read: {exc}")
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


# --- scenarios -------------------------------------------------------------------------------


class Scenario(Protocol):
    """A way to stop a container, and what must hold afterwards.

    .. versionadded:: 0.1
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    async def run(self, ctx: Context) -> ScenarioResult:
        """Run against ``ctx``'s image and judge the outcome."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StopIdle:
    """``docker stop`` with nothing in flight: exit 0, fast.

    Args:
        idle_limit: seconds an idle stop may take.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-idle"
    summary: ClassVar[str] = "docker stop with nothing in flight: exit 0, well before the timeout"
    idle_limit: float = 2.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start()
        stop = await ctx.stop(service)
        sig = stop_signal_of(service.container, ctx.image)
        judge_exit(f, stop, timeout=ctx.stop_timeout, image=ctx.image, pid1=service.pid1, sig=sig)
        if stop.exit_code == 0 and stop.seconds > self.idle_limit:
            f.problem(
                f"an idle stop took {stop.seconds:.2f} s (over {self.idle_limit} s): something "
                "waits on a timer (a poll loop, a keep-alive timeout, a fixed delay)"
            )
        logs = await ctx.logs(service)
        judge_report_events(f, logs, ctx.workload, strict=True)
        judge_traceback(f, logs)
        return f.result(self.name, stop=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopUnderLoad:
    """``docker stop`` under steady load with long requests in flight: every accepted
    request answered, readiness 503 before the listener closes, new connections refused,
    exit 0 before the timeout, acknowledged writes kept.

    Args:
        concurrency: steady short requests in flight.
        work_ms: length of a steady request.
        writers: concurrent writers (0 for none).
        long_requests: long requests in flight when the stop begins.
        long_ms: their length; by default 40 % of the stop timeout, at most 3 s.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-under-load"
    summary: ClassVar[str] = (
        "docker stop under load with long requests in flight: all answered, /readyz 503 first, "
        "new connections refused, exit 0 in time, acked writes kept"
    )
    concurrency: int = 4
    work_ms: int = 20
    writers: int = 2
    long_requests: int = 8
    long_ms: int | None = None

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        w = ctx.workload
        long_ms = self.long_ms or min(int(ctx.stop_timeout * 400), 3000)
        service = await ctx.start()
        ledger = Ledger()
        prober = await ctx.probe(service)
        async with ctx.client(service, ledger, timeout=ctx.stop_timeout + _HANG_GUARD_S) as client:
            stop_load = asyncio.Event()
            bound = ctx.stop_timeout + _HANG_GUARD_S
            load = [
                asyncio.create_task(
                    client.steady(
                        stop=stop_load,
                        concurrency=self.concurrency,
                        ms=self.work_ms,
                        max_seconds=bound,
                    )
                )
            ]
            if self.writers and w.has_items:
                load.append(
                    asyncio.create_task(
                        client.steady(
                            stop=stop_load,
                            concurrency=self.writers,
                            writes=True,
                            max_seconds=bound,
                        )
                    )
                )
            ctx.step(f"load running, {self.long_requests} requests of {long_ms} ms in flight")
            await asyncio.sleep(0.3)
            longs = [
                asyncio.create_task(client.work(long_ms, kind=Kind.LONG))
                for _ in range(self.long_requests)
            ]
            await _settle(client)
            stop_began, stop_began_wall = time.monotonic(), time.time()
            stop_load.set()
            stop = await ctx.stop(service)
            exited = _exit_time(stop, stop_began, stop_began_wall)
            await _gather_bounded(load + longs)
        events = await prober.finish()
        sig = stop_signal_of(service.container, ctx.image)
        judge_exit(f, stop, timeout=ctx.stop_timeout, image=ctx.image, pid1=service.pid1, sig=sig)
        judge_inflight(f, ledger, stop_began)
        judge_connections(
            f,
            events,
            stop_began=stop_began,
            exited=exited,
            where=prober.where,
            check_ready=w.has_admin,
        )
        logs = await ctx.logs(service)
        judge_report_events(f, logs, w, strict=True)
        judge_traceback(f, logs)
        lost = await judge_writes(f, ctx, service.volume, ledger)
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopOverBudget:
    """``docker stop`` with requests longer than the stop timeout: the work is cut, state is
    still flushed, and the container exits by itself before SIGKILL.

    Args:
        long_requests: requests in flight that cannot finish in time.
        over_s: how much longer than the stop timeout they ask for.
        writes: writes acknowledged before the stop (checked after a restart).

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-over-budget"
    summary: ClassVar[str] = (
        "docker stop with requests longer than the timeout: work cut, state flushed, "
        "exit before SIGKILL (not 137)"
    )
    long_requests: int = 4
    over_s: int = 5
    writes: int = 20

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        w = ctx.workload
        long_ms = (ctx.stop_timeout + self.over_s) * 1000
        service = await ctx.start()
        ledger = Ledger()
        guard = ctx.stop_timeout + self.over_s + _HANG_GUARD_S
        async with ctx.client(service, ledger, timeout=guard) as client:
            if w.has_items:
                await asyncio.gather(*(client.write() for _ in range(self.writes)))
            ctx.step(f"{self.long_requests} requests of {long_ms} ms in flight")
            longs = [
                asyncio.create_task(client.work(long_ms, kind=Kind.LONG))
                for _ in range(self.long_requests)
            ]
            await _settle(client)
            stop = await ctx.stop(service)
            await _gather_bounded(longs)
        sig = stop_signal_of(service.container, ctx.image)
        judge_exit(
            f,
            stop,
            timeout=ctx.stop_timeout,
            image=ctx.image,
            pid1=service.pid1,
            sig=sig,
            expected=(0, 3),
        )
        if stop.exit_code == 0:
            f.note("exited 0 although in-flight work was cut (graceful's contract uses 3)")
        cut = [r for r in ledger.select((Kind.LONG,)) if not r.ok]
        if cut:
            f.note(f"{len(cut)} requests longer than the budget were cut: {describe_failures(cut)}")
        logs = await ctx.logs(service)
        judge_report_events(f, logs, w, strict=True)
        judge_traceback(f, logs, fail=False)
        lost = await judge_writes(f, ctx, service.volume, ledger)
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class KillUnderLoad:
    """``docker kill`` (SIGKILL) under write load: exit 137, and a new container on the same
    volume holds every acknowledged write.

    Args:
        writers: concurrent writers.
        min_acked: acknowledged writes to wait for before the kill.
        max_wait: the longest to wait for them, seconds.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "kill-under-load"
    summary: ClassVar[str] = (
        "docker kill (SIGKILL) under write load: exit 137, every acked write there after a restart"
    )
    writers: int = 16
    min_acked: int = 30
    max_wait: float = 10.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        if not ctx.workload.has_items:
            f.note("not run: the workload has no items path")
            return f.result(self.name)
        service = await ctx.start()
        ledger = Ledger()
        async with ctx.client(service, ledger) as client:
            stop_load = asyncio.Event()
            load = asyncio.create_task(
                client.steady(
                    stop=stop_load,
                    concurrency=self.writers,
                    writes=True,
                    max_seconds=self.max_wait + _HANG_GUARD_S,
                )
            )
            ctx.step(f"{self.writers} writers running")
            deadline = time.monotonic() + self.max_wait
            while len(ledger.acked_ids()) < self.min_acked and time.monotonic() < deadline:
                if load.done():
                    break
                await asyncio.sleep(0.01)
            ctx.step("docker kill")
            started = time.monotonic()
            await ctx.kill(service, "SIGKILL")
            stop_load.set()
            stop = await ctx.wait_exit(service, started, _HANG_GUARD_S)
            await _gather_bounded([load])
        if stop is None:
            f.problem("the container did not exit after SIGKILL")
        elif stop.exit_code != 137:
            f.problem(f"exited {stop.exit_code} after SIGKILL (expected 137)")
        lost = await judge_writes(f, ctx, service.volume, ledger)
        if not ledger.acked_ids():
            f.problem("no write was acknowledged before the kill, so nothing could be checked")
        return f.result(self.name, stop=stop, ledger=ledger, lost=lost)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalStorm:
    """Many SIGTERMs at once (``docker kill --signal TERM``): the stop runs once and the
    container exits cleanly (0, or 5 for the documented forced exit on a third signal).

    Args:
        signals: how many SIGTERMs to send.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "signal-storm"
    summary: ClassVar[str] = "many SIGTERMs at once: one shutdown (one shutdown.report), clean exit"
    signals: int = 5

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start()
        ctx.step(f"{self.signals} x docker kill --signal SIGTERM")
        started = time.monotonic()

        def storm() -> int:
            sent = 0
            for _ in range(self.signals):
                if not service.container.kill("SIGTERM"):
                    break
                sent += 1
            return sent

        sent = await asyncio.to_thread(storm)
        stop = await wait_signalled_exit(f, ctx, service, started, sig=f"{sent} x SIGTERM")
        if stop is None:
            return f.result(self.name)
        judge_exit(
            f,
            stop,
            timeout=ctx.stop_timeout,
            image=ctx.image,
            pid1=service.pid1,
            sig="SIGTERM",
            expected=(0, 5),
        )
        if stop.exit_code == 5:
            f.note("exit 5: a repeated signal forced the exit, as the escalation ladder documents")
        logs = await ctx.logs(service)
        judge_report_events(f, logs, ctx.workload, strict=True)
        judge_traceback(f, logs)
        f.note(f"{sent} SIGTERMs delivered before the exit")
        return f.result(self.name, stop=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopDuringStartup:
    """``docker stop`` right after start (as soon as PID 1 handles the stop signal, where the
    engine lets the harness see that): clean exit, and a new container on the same volume
    starts and serves its items.

    Args:
        handler_wait: the longest to wait for PID 1's handler before stopping anyway.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "stop-during-startup"
    summary: ClassVar[str] = (
        "docker stop right after start: exit 0, and the state still opens after a restart"
    )
    handler_wait: float = 5.0

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        service = await ctx.start(ready=False)
        sig = stop_signal_of(service.container, ctx.image)
        number = _signal_number_or_none(sig)
        if number is not None:
            service.pid1 = await asyncio.to_thread(
                service.container.wait_handler, number, self.handler_wait
            )
        stop = await ctx.stop(service)
        judge_exit(f, stop, timeout=ctx.stop_timeout, image=ctx.image, pid1=service.pid1, sig=sig)
        logs = await ctx.logs(service)
        judge_traceback(f, logs)
        if ctx.workload.has_items:
            try:
                await ctx.stored_after_restart(service.volume)
            except (ContainerError, httpx.HTTPError, KeyError, ValueError) as exc:
                f.problem(
                    "after a stop during startup, a new container on the same volume did not "
                    f"serve its items: {exc}"
                )
            else:
                f.note("a new container on the same volume started and served its items")
        return f.result(self.name, stop=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signals:
    """SIGINT behaves like SIGTERM (in-flight answered, exit 0), and the image's configured
    ``STOPSIGNAL`` (what ``docker stop`` sends) is handled.

    Args:
        inflight: requests in flight when SIGINT arrives.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "signals"
    summary: ClassVar[str] = (
        "SIGINT behaves like SIGTERM; the image's STOPSIGNAL is what docker stop sends, and it "
        "is handled"
    )
    inflight: int = 2

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        ledger = Ledger()
        # 1. SIGINT with requests in flight.
        service = await ctx.start()
        work_ms = min(int(ctx.stop_timeout * 300), 2000)
        async with ctx.client(service, ledger, timeout=ctx.stop_timeout + _HANG_GUARD_S) as client:
            longs = [
                asyncio.create_task(client.work(work_ms, kind=Kind.LONG))
                for _ in range(self.inflight)
            ]
            await _settle(client)
            ctx.step("docker kill --signal SIGINT")
            started = time.monotonic()
            await ctx.kill(service, "SIGINT")
            stop = await wait_signalled_exit(
                f, ctx, service, started, sig="SIGINT", prefix="SIGINT: "
            )
            await _gather_bounded(longs)
        if stop is not None:
            judge_exit(
                f,
                stop,
                timeout=ctx.stop_timeout,
                image=ctx.image,
                pid1=service.pid1,
                sig="SIGINT",
                prefix="SIGINT: ",
            )
            judge_inflight(f, ledger, started, prefix="SIGINT: ")
            judge_traceback(f, await ctx.logs(service))
        # 2. docker stop sends the configured STOPSIGNAL.
        service = await ctx.start()
        sig = stop_signal_of(service.container, ctx.image)
        number = _signal_number_or_none(sig)
        pid1 = service.pid1
        if pid1 is not None and number is not None and pid1.handles(number) is False:
            f.problem(
                f"{sig} (STOPSIGNAL): PID 1 ({pid1.cmdline}) installs no {sig} handler, so "
                "docker stop's signal is not handled"
            )
        stop2 = await ctx.stop(service)
        judge_exit(
            f,
            stop2,
            timeout=ctx.stop_timeout,
            image=ctx.image,
            pid1=pid1,
            sig=sig,
            prefix=f"{sig} (STOPSIGNAL): ",
        )
        f.note(f"docker stop sends {sig} (the image's STOPSIGNAL)")
        return f.result(self.name, stop=stop2, ledger=ledger)


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        StopIdle,
        StopUnderLoad,
        StopOverBudget,
        KillUnderLoad,
        SignalStorm,
        StopDuringStartup,
        Signals,
    )
}


async def run_scenarios(
    engine: Engine,
    image: ImageInfo,
    scenarios: Sequence[Scenario],
    settings: Settings,
    *,
    progress: Progress | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> Report:
    """Run scenarios one after the other against an image.

    A scenario that cannot finish (the container never becomes ready, the engine errors)
    fails with a finding that says so; the next one still runs. Each scenario's containers
    and volumes are removed when it ends.

    Args:
        engine: the connected engine.
        image: the image under test.
        scenarios: scenario instances, e.g. ``[StopIdle(), KillUnderLoad(writers=32)]``.
        settings: what they share.
        progress: called with a short status text as scenarios advance.
        on_result: called with each verdict as soon as it is known.

    .. versionadded:: 0.1
    """
    report = Report(image=image.ref)
    for scenario in scenarios:
        ctx = Context(engine, image, settings, scenario=scenario.name, progress=progress)
        try:
            result = await scenario.run(ctx)
        except Exception as exc:  # a broken image must not stop the other scenarios
            result = ScenarioResult(
                name=scenario.name,
                passed=False,
                findings=(f"the scenario could not finish: {_exception_text(exc)}",),
            )
        finally:
            await ctx.close()
        report.scenarios.append(result)
        if on_result is not None:
            on_result(result)
    return report


# --- helpers ---------------------------------------------------------------------------------


async def _settle(client: LoadClient) -> None:
    """Give requests just sent time to reach the server: a short request sent after them
    must come back (the listener accepts in order), then a little more for them to be read."""
    await asyncio.sleep(0.1)
    await client.work(0)
    await asyncio.sleep(0.1)


async def _gather_bounded(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Wait for load tasks; cancel what is left after the hang guard."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=_HANG_GUARD_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _exit_time(stop: StopResult, began: float, began_wall: float) -> float:
    """The process's exit on the monotonic clock: the engine's record of it when available
    (the stop call returns later, after the engine's clean-up), else now."""
    now = time.monotonic()
    if stop.finished_at is None:
        return now
    return min(now, began + max(stop.finished_at - began_wall, 0.0))


def _signal_number_or_none(sig: str) -> int | None:
    try:
        return signal_number(sig)
    except (KeyError, ValueError):
        return None


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in argv)


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def opt_in_scenarios() -> dict[str, type[Scenario]]:
    """Scenarios that run only when named: they need more than the image (a load balancer).

    .. versionadded:: 0.1
    """
    # Imported here: graceful.harness.rolling builds on this module.
    from graceful.harness.rolling import RollingRestart

    return {RollingRestart.name: RollingRestart}


def scenario_names(*, opt_in: bool = False) -> list[str]:
    """Every default scenario's name, in run order; with ``opt_in``, then the opt-in ones."""
    return list(SCENARIOS) + (list(opt_in_scenarios()) if opt_in else [])


def make_scenarios(names: Iterable[str]) -> list[Scenario]:
    """Default-configured scenarios by name (opt-in ones included).

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    known = {**SCENARIOS, **opt_in_scenarios()}
    out: list[Scenario] = []
    for name in names:
        if name not in known:
            raise KeyError(f"unknown scenario {name!r}; known: {', '.join(known)}")
        out.append(known[name]())
    return out

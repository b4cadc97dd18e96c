"""Judges: what a scenario concludes from an exit, the clients' ledger, the probes and the logs.

Each ``judge_*`` function adds findings (problems fail the scenario, notes do not) to a
:class:`~graceful.harness.context.Findings`. Where the harness can tell *why* a stop went
wrong it says so: :func:`sigkill_diagnosis` reads the image's configuration and PID 1's signal
masks (a shell-form ``CMD``, a shell that does not forward, no handler for the stop signal, a
drain not bounded by the stop timeout); :func:`describe_exit` names the other exit codes,
graceful's in the words of :class:`~graceful.runtime.ExitCode` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import httpx

from graceful.harness.container import (
    ContainerError,
    ImageInfo,
    Pid1,
    StopResult,
    log_lines,
    signal_number_or_none,
    stop_signal_of,
)
from graceful.harness.context import Context, Findings, Service
from graceful.harness.load import Kind, Ledger, Workload, describe_failures
from graceful.harness.prober import PROBE_INTERVAL_S, ProbeEvent
from graceful.runtime import ExitCode

__all__ = [
    "describe_exit",
    "judge_connections",
    "judge_exit",
    "judge_inflight",
    "judge_report_events",
    "judge_traceback",
    "judge_writes",
    "sigkill_diagnosis",
    "wait_signalled_exit",
]

# Stop budgets end a little before SIGKILL (the runtime keeps a safety margin); an exit this
# close to the timeout after a SIGKILL means the whole timeout was waited.
_KILL_SLACK_S = 0.5
_TRACEBACK = "Traceback (most recent call last)"


def judge_exit(
    f: Findings,
    ctx: Context,
    service: Service,
    stop: StopResult,
    *,
    sig: str | None = None,
    expected: Iterable[int] = (ExitCode.OK,),
    prefix: str = "",
) -> None:
    """Add findings for an exit code that is not one of ``expected``.

    Args:
        f: where findings go.
        ctx: the scenario's context (the stop timeout, the image's configuration).
        service: the container that exited (its PID 1, its stop signal).
        stop: how it ended.
        sig: the signal that asked it to stop; the one ``docker stop`` sends when None.
        expected: the exit codes that are no problem.
        prefix: put before each finding (which part of a scenario it is about).
    """
    code = stop.exit_code
    if code in set(expected):
        return
    timeout = ctx.stop_timeout
    if code == 137 and not stop.oom_killed and stop.seconds >= timeout - _KILL_SLACK_S:
        if sig is None:
            sig = stop_signal_of(service.container, ctx.image)
        diagnosis = sigkill_diagnosis(timeout=timeout, image=ctx.image, pid1=service.pid1, sig=sig)
        f.problem(prefix + diagnosis)
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
    number = signal_number_or_none(sig)
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
    """Plain words for an exit code that is not the expected one: death by a signal, or what
    graceful's :class:`~graceful.runtime.ExitCode` says the code means."""
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
    try:
        known = ExitCode(code)
    except ValueError:
        return f"exited {code} {after}"
    return f"exited {code} {after}: {known.description} (graceful's ExitCode.{known.name})"


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
                f"{PROBE_INTERVAL_S * 1000:.0f} ms): load balancers keep routing here until "
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


async def judge_writes(f: Findings, ctx: Context, service: Service, ledger: Ledger) -> int:
    """Restart on the service's volume; every acknowledged write must be there. Returns the
    loss."""
    acked = ledger.acked_ids()
    if not ctx.workload.has_items or not acked:
        return 0
    try:
        stored = await ctx.stored_after_restart(service.volume)
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


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in argv)

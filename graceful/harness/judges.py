"""Judges: what a scenario concludes from an exit, the clients' ledger, the probes and the logs.

Each ``judge_*`` function adds findings (problems fail the scenario, notes do not) to a
:class:`~graceful.harness.context.Findings`. Where the harness can tell *why* a stop went
wrong it says so: :func:`sigkill_diagnosis` reads the image's configuration and PID 1's signal
masks (a shell-form ``CMD``, a shell that does not forward, no handler for the stop signal, a
drain not bounded by the stop timeout); :func:`describe_exit` names the other exit codes,
graceful's in the words of :class:`~graceful.status.ExitCode` itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from graceful.harness.container import (
    ImageInfo,
    Pid1,
    StopResult,
    log_lines,
    signal_number_or_none,
    stop_signal_of,
)
from graceful.harness.context import Context, Findings, Service
from graceful.harness.load import Kind, Ledger, Record, describe_failures
from graceful.harness.probe_script import PROBE_TIMEOUT_S
from graceful.harness.prober import PROBE_INTERVAL_S, ProbeEvent
from graceful.harness.workload import Workload
from graceful.status import ExitCode

__all__ = [
    "describe_exit",
    "judge_abandoned",
    "judge_connections",
    "judge_exit",
    "judge_inflight",
    "judge_long_inflight",
    "judge_report_events",
    "judge_traceback",
    "judge_workers",
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
    shell = service.pid1.shell_child if service.pid1 is not None else None
    if code == 143 and shell is not None:
        f.problem(
            f"{prefix}exited 143 after {stop.seconds:.2f} s: PID 1 is an init ("
            f"{service.pid1.cmdline if service.pid1 else ''}) that passed the signal to its "
            f"child, a shell ({shell}), which died of it without passing it on, so the server "
            "went down with it and its work was cut; put `exec` before the server's command "
            "in the script (then no init is needed)"
        )
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
        # Not --init: Docker's init forwards the signal to its child, the shell, which dies
        # of it (a shell does not forward it either), and the container ends with 143 and
        # the server's work cut. Only `exec` makes the server the process that is signalled.
        return (
            f"{head}{never}: PID 1 is a shell ({pid1.cmdline}) that does not forward signals "
            "to the server it started; put `exec` before the server's command in the script "
            "(exec python3 app.py) so the server replaces the shell as PID 1"
        )
    if pid1 is not None and number is not None:
        handles = pid1.handles(number)
        if handles is True:
            hint = ""
            if "uvicorn" in pid1.cmdline:
                hint = (
                    "; uvicorn waits for every open response unless given "
                    "--timeout-graceful-shutdown (below the stop timeout), or run it with graceful"
                )
            return (
                f"{head}PID 1 ({pid1.cmdline}) handles {sig} but did not exit in time: its "
                "drain is not bounded by the stop timeout (work longer than the budget is waited "
                f"for instead of cut){hint}"
            )
        if handles is False:
            if pid1.ignored is not None and number in pid1.ignored:
                return f"{head}{never}: PID 1 ({pid1.cmdline}) ignores {sig} (SIG_IGN)"
            return (
                f"{head}{never}: PID 1 ({pid1.cmdline}) installs no {sig} handler, and the kernel "
                f"drops signals with the default action sent to PID 1; handle {sig} and drain "
                "(graceful.run does): under --init it would die of the signal instead (exit "
                "143), cutting its in-flight work"
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
    graceful's :class:`~graceful.status.ExitCode` says the code means."""
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


def judge_inflight(
    f: Findings,
    ledger: Ledger,
    stop_began: float,
    *,
    prefix: str = "",
    require: bool = True,
) -> None:
    """Every request sent before the stop began must have been answered with 2xx.

    Args:
        f: where findings go.
        ledger: the load's requests.
        stop_began: when the stop (or signal) was sent, monotonic.
        prefix: put before each finding.
        require: when no request was still in flight at the stop, the drain was not tested:
            say so as inconclusive (else as a note).
    """
    inflight = ledger.select((Kind.WORK, Kind.LONG, Kind.WRITE), sent_before=stop_began)
    failed_before = [r for r in inflight if not r.ok and r.answered < stop_began]
    if failed_before:
        f.problem(
            f"{prefix}{len(failed_before)} of {len(inflight)} requests failed before the stop "
            f"began, so the service was not serving them ({describe_failures(failed_before)})"
        )
        return
    cut = [r for r in inflight if not r.ok]
    if cut:
        f.problem(
            f"{prefix}in-flight requests were cut ({len(cut)} of {len(inflight)}: "
            f"{describe_failures(cut)})"
        )
        return
    at_stop = [r for r in inflight if r.answered > stop_began]
    if not at_stop:
        text = (
            f"{prefix}no request was in flight when the stop began ({len(inflight)} sent "
            "before it were all answered before it), so answering in-flight work was not tested"
        )
        if require:
            f.inconclusive(text)
        else:
            f.note(text)
        return
    longs = [r for r in inflight if r.kind is Kind.LONG]
    f.note(
        f"{prefix}all {len(inflight)} requests sent before the stop were answered "
        f"({len(at_stop)} still in flight when it began, {len(longs)} long)"
    )


def judge_long_inflight(
    f: Findings, ledger: Ledger, stop_began: float, *, asked_ms: int, target: str
) -> list[Record]:
    """The long requests must really have been in flight when the stop began (an endpoint
    that ignores the duration it is asked for answers them at once). Returns those that were.
    """
    longs = ledger.select((Kind.LONG,))
    held = [r for r in longs if r.sent < stop_began < r.answered]
    early = [r for r in longs if r.answered <= stop_began]
    asked = f"{asked_ms / 1000:g} s"
    if not held:
        took = max((r.answered - r.sent for r in early), default=0.0)
        f.inconclusive(
            f"none of the {len(longs)} requests for {asked} (GET {target}) was in flight when "
            f"the stop began (answered within {took:.2f} s): the endpoint does not hold a "
            "request for the time asked, so work longer than the budget was not tried; judge "
            "it with --work-url"
        )
        return held
    if early:
        f.note(f"{len(early)} of {len(longs)} requests for {asked} were answered before the stop")
    lead = stop_began - max(r.sent for r in held)
    f.note(
        f"{len(held)} requests for {asked} (GET {target}) were in flight when the stop began "
        f"(the last sent {lead:.2f} s before it)"
    )
    return held


def judge_connections(
    f: Findings,
    events: Sequence[ProbeEvent],
    *,
    stop_began: float,
    exited: float,
    where: str,
    check_ready: bool,
    ready_on: str = "admin",
) -> None:
    """Readiness must go 503 before the listener closes; new connections must then be refused,
    never accepted and reset (nor accepted and abandoned: :func:`judge_abandoned`).

    Args:
        f: where findings go.
        events: the prober's events.
        stop_began: when the stop was sent, monotonic.
        exited: when the process exited, monotonic.
        where: where the prober ran (``netns`` or ``host``).
        check_ready: readiness is graceful's (admin port): it must go 503 first.
        ready_on: where readiness was probed; on the main port it is only described.
    """
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
    if not check_ready and ready_on == "main":
        unready = next(
            (e for e in ready if not (e.outcome == "answered" and e.status == 200)), None
        )
        if unready is not None:
            how = f"{unready.status}" if unready.outcome == "answered" else unready.outcome
            f.note(
                f"readiness (on the main port) went {how} {unready.t - stop_began:.3f} s after "
                "the stop began"
            )
    if where == "host":
        f.note(
            "new connections probed through Docker's userland proxy (no python3 image for an "
            "in-container prober): refused and reset cannot be told apart"
        )
        return
    before = [e for e in events if e.t < stop_began and e.kind == "main"]
    judge_abandoned(f, main, slow=any(e.outcome == "timeout" for e in before))


def judge_abandoned(f: Findings, main: Sequence[ProbeEvent], *, slow: bool = False) -> None:
    """New connections after the stop began must be refused, not taken and dropped.

    A listener left open with nobody serving it takes every connection (the kernel completes
    the handshake into its backlog) and then either never answers (a probe timeout) or resets
    it when the process exits. One such connection is the backlog race (a connection that
    arrived as the listener closed); more are the fault, and the finding gives the numbers
    that tell the two apart.

    Args:
        f: where findings go.
        main: the probes of the service's port made while it stopped.
        slow: probes timed out before the stop too (the probe path is slow even when
            served), so a timeout during the stop is no sign of an abandoned connection.
    """
    timeouts = [e for e in main if e.outcome == "timeout"]
    if slow and timeouts:
        f.note(
            f"{len(timeouts)} probes got no answer within {PROBE_TIMEOUT_S:g} s during the stop, "
            "but probes timed out before it too (the probed work request is slow): abandoned "
            "connections cannot be told from slow ones; pass a work URL whose 0 s request is "
            "fast"
        )
        timeouts = []
    dropped = [e for e in main if e.outcome in ("reset", "closed") and e.connected is not False]
    refused = sum(1 for e in main if e.outcome == "refused")
    bad = len(timeouts) + len(dropped)
    counts = (
        f"{len(timeouts)} of {len(main)} probes got no answer within {PROBE_TIMEOUT_S:g} s, "
        f"{len(dropped)} were reset or closed after connecting, {refused} were refused"
    )
    if bad >= 2 and timeouts:
        f.problem(
            f"new connections were accepted and abandoned after the stop began ({counts}): "
            "the listener stayed open with nobody serving it, so clients hang until the "
            "process exits and are then reset; close the listener when the stop begins so "
            "new connections are refused (more than the one connection of the backlog race "
            "at the close)"
        )
    elif bad >= 2:
        f.problem(
            f"new connections were accepted then reset after the stop began ({counts}): a "
            "listener stayed open with nobody serving it; close it so connections are refused"
        )
    elif bad:
        f.note(
            f"one new connection arriving as the listener closed was dropped (the backlog "
            f"race: {counts})"
        )
    elif refused:
        f.note(f"new connections after the listener closed were refused ({refused} probes)")


def judge_report_events(f: Findings, logs: str, workload: Workload, *, strict: bool) -> None:
    """One stop, one summary: more than one ``shutdown.report`` means the stop ran twice.

    With several worker processes (``graceful serve --workers N``), the workers that did not
    exit 0 are named: see :func:`judge_workers`.
    """
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
    judge_workers(f, logs, workload.report_event)


def judge_workers(f: Findings, logs: str, event: str = "shutdown.report") -> None:
    """Name the worker processes behind a container's exit code, and those that died while
    serving.

    A supervisor (``graceful serve --workers N``) writes one ``event`` for the container with
    a line per worker (``{"worker", "pid", "status", "exit_code", "seconds"}``), and each
    worker its own ``worker.<event>``. Each worker that did not exit 0 is quoted from the
    container's report, with the hooks that failed in its own. That is a problem when the
    container's exit code already is one (the finding says which worker), else a note (an
    exit the scenario expects, such as work cut past the budget). A worker that exited while
    serving (``worker.exited``: the supervisor replaced it) is a note.
    """
    report = next(reversed(_events(logs, event)), None)
    workers = report.get("workers") if report is not None else None
    if report is not None and isinstance(workers, list):
        bad = [w for w in workers if isinstance(w, dict) and w.get("exit_code") not in (0, None)]
        if bad:
            own = {r.get("worker"): r for r in _events(logs, f"worker.{event}")}
            named = "; ".join(_worker_text(w, own.get(w.get("worker"))) for w in bad)
            code = report.get("exit_code")
            text = f"{len(bad)} of {len(workers)} workers did not exit 0 ({event}: {named})"
            if any(f"exited {code} " in problem for problem in f.problems):
                f.problem(text)
            else:
                f.note(text)
    for exited in _events(logs, "worker.exited"):
        f.note(
            f"worker {exited.get('worker')} (pid {exited.get('pid')}) exited while serving "
            f"({exited.get('status')}, after {exited.get('ran_s')} s) and was replaced"
        )


def _worker_text(line: dict[str, Any], own: dict[str, Any] | None) -> str:
    seconds = line.get("seconds")
    when = f" {seconds:.2f} s after the stop began" if isinstance(seconds, int | float) else ""
    text = f"worker {line.get('worker')} (pid {line.get('pid')}): {line.get('status')}{when}"
    failed = own.get("failed_hooks") if own is not None else None
    if failed:
        text += f", its failed hooks: {', '.join(map(str, failed))}"
    return text


def _events(logs: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines whose ``event`` is ``event``, in order."""
    found = []
    for line in log_lines(logs, f'"{event}"'):
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:  # not JSON, or no object on the line
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


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


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in argv)

"""graceful.harness.judges: the verdict logic, from exits, ledgers, probes and logs.

The judges take the scenario's context and the service; here both are real objects of the
harness built on a docker SDK client that is never connected (no engine is needed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.harness.container import Container, ImageInfo, Pid1, StopResult
from graceful.harness.context import Context, Findings, Service, Settings
from graceful.harness.engine import Engine
from graceful.harness.judges import (
    describe_exit,
    judge_connections,
    judge_exit,
    judge_inflight,
    judge_long_inflight,
    judge_report_events,
    judge_traceback,
    sigkill_diagnosis,
)
from graceful.harness.load import Kind, Ledger, Record, RequestOutcome, Workload
from graceful.harness.prober import ProbeEvent
from graceful.harness.report import Verdict
from graceful.harness.work_done import judge_work_done, too_soon
from graceful.runtime import ExitCode


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine whose SDK client is never connected: the judges only read objects."""
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    yield Engine(client, run_id="unit")
    client.close()


def judged(
    engine: Engine, image: ImageInfo, *, pid1: Pid1 | None = None, stop_signal: str = ""
) -> tuple[Context, Service]:
    """A scenario context with a 3 s stop timeout, and a service whose container was
    configured with ``stop_signal`` (the image's when empty)."""
    ctx = Context(engine, image, Settings(stop_timeout=3), scenario="unit")
    config = {"StopSignal": stop_signal} if stop_signal else {}
    raw = engine.client.containers.prepare_model(
        {"Id": "c0ffee", "Name": "/unit", "Config": config}
    )
    service = Service(container=Container(raw), volume="", main_port=0, admin_port=None, pid1=pid1)
    return ctx, service


def rec(kind: Kind, sent: float, outcome: RequestOutcome, **kw: object) -> Record:
    return Record(kind=kind, sent=sent, answered=sent + 0.1, outcome=outcome, **kw)  # type: ignore[arg-type]


def image(
    cmd: tuple[str, ...] = ("python3", "app.py"), entrypoint: tuple[str, ...] = ()
) -> ImageInfo:
    return ImageInfo(ref="x", id="sha", entrypoint=entrypoint, cmd=cmd, stop_signal="SIGTERM")


def test_sigkill_diagnosis_names_the_cause() -> None:
    shell = sigkill_diagnosis(
        timeout=3, image=image(("/bin/sh", "-c", "python3 app.py")), pid1=None, sig="SIGTERM"
    )
    assert "shell form" in shell
    assert "/bin/sh is PID 1" in shell

    wrapper = sigkill_diagnosis(
        timeout=3, image=image(), pid1=Pid1("/bin/bash /start.sh"), sig="SIGTERM"
    )
    assert "PID 1 is a shell" in wrapper

    no_handler = sigkill_diagnosis(
        timeout=3,
        image=image(),
        pid1=Pid1("python3 app.py", frozenset({2}), frozenset()),
        sig="SIGTERM",
    )
    assert "installs no SIGTERM handler" in no_handler

    slow = sigkill_diagnosis(
        timeout=3,
        image=image(),
        pid1=Pid1("python3 app.py", frozenset({2, 15}), frozenset()),
        sig="SIGTERM",
    )
    assert "handles SIGTERM but did not exit in time" in slow

    unknown = sigkill_diagnosis(timeout=3, image=image(), pid1=None, sig="SIGTERM")
    assert "shell-form CMD?" in unknown


def test_judge_exit_only_complains_about_unexpected_codes(engine: Engine) -> None:
    ctx, service = judged(engine, image())
    f = Findings()
    judge_exit(f, ctx, service, StopResult(0, 0.1), sig="SIGTERM")
    judge_exit(f, ctx, service, StopResult(3, 2.5), sig="SIGTERM", expected=(0, 3))
    assert f.problems == []
    judge_exit(f, ctx, service, StopResult(137, 3.2), sig="SIGTERM")
    judge_exit(f, ctx, service, StopResult(143, 0.2), sig="SIGTERM")
    judge_exit(f, ctx, service, StopResult(137, 0.2, oom_killed=True), sig="SIGTERM")
    assert f.problems[0].startswith("exited 137 after the full 3 s timeout")
    assert "exited 143" in f.problems[1]
    assert "default action" in f.problems[1]
    assert "OOM" in f.problems[2]


def test_judge_inflight_counts_only_requests_sent_before_the_stop() -> None:
    ledger = Ledger()
    ledger.add(rec(Kind.LONG, 1.0, RequestOutcome.OK, status=200))
    ledger.add(Record(kind=Kind.LONG, sent=1.0, answered=2.5, outcome=RequestOutcome.CLOSED))
    ledger.add(rec(Kind.WORK, 5.0, RequestOutcome.REFUSED))  # after the stop: not in flight
    f = Findings()
    judge_inflight(f, ledger, stop_began=2.0)
    assert f.problems == ["in-flight requests were cut (1 of 2: 1 closed)"]


def test_judge_inflight_does_not_call_a_failure_before_the_stop_a_cut() -> None:
    """A request answered 404 before the signal (an image without the work endpoint) was not
    cut by the stop; it is still a problem, named for what it is. The old judge said
    "in-flight requests were cut (1 of 1: 1 HTTP 404)"."""
    ledger = Ledger()
    ledger.add(rec(Kind.WORK, 1.0, RequestOutcome.HTTP_ERROR, status=404))  # answered at 1.1
    f = Findings()
    judge_inflight(f, ledger, stop_began=2.0)
    expected = "1 of 1 requests failed before the stop began, so the service was not serving"
    assert f.problems == [f"{expected} them (1 HTTP 404)"]


def ev(t: float, kind: str, outcome: str, status: int | None = None) -> ProbeEvent:
    return ProbeEvent(t, kind, outcome, status)


def test_judge_connections_good_stop() -> None:
    events = [
        ev(0.5, "ready", "answered", 200),
        ev(1.01, "ready", "answered", 503),
        ev(1.02, "main", "refused"),
        ev(1.03, "ready", "answered", 503),
        ev(1.04, "main", "refused"),
    ]
    f = Findings()
    judge_connections(f, events, stop_began=1.0, exited=2.0, where="netns", check_ready=True)
    assert f.problems == []
    assert any("went 503" in n for n in f.notes)


def test_judge_connections_flags_no_503_late_200_and_resets() -> None:
    f = Findings()
    judge_connections(
        f,
        [ev(1.1, "ready", "answered", 200), ev(1.2, "main", "refused")],
        stop_began=1.0,
        exited=2.0,
        where="netns",
        check_ready=True,
    )
    assert any("readiness never went 503" in p for p in f.problems)

    f = Findings()
    judge_connections(
        f,
        [
            ev(1.1, "ready", "answered", 503),
            ev(1.2, "main", "reset"),
            ev(1.3, "ready", "answered", 200),
            ev(1.4, "main", "closed"),
        ],
        stop_began=1.0,
        exited=2.0,
        where="netns",
        check_ready=True,
    )
    assert any("still answered 200 after the listener had closed" in p for p in f.problems)
    assert any("accepted then reset" in p for p in f.problems)


def test_judge_report_events_and_traceback() -> None:
    f = Findings()
    logs = '{"event": "shutdown.report"}\n{"event": "shutdown.report"}\n'
    judge_report_events(f, logs, Workload(), strict=True)
    assert f.problems
    assert "ran 2 times" in f.problems[0]

    f = Findings()
    judge_traceback(f, "x\nTraceback (most recent call last):\n  File x\nKeyboardInterrupt\n")
    assert f.problems == ["a traceback was logged: KeyboardInterrupt"]


def test_judge_exit_diagnoses_the_signal_docker_stop_sent(engine: Engine) -> None:
    """Without an explicit signal, the diagnosis names the container's stop signal."""
    pid1 = Pid1("python3 app.py", frozenset({2, 15}), frozenset())
    ctx, service = judged(engine, image(), pid1=pid1, stop_signal="SIGQUIT")
    f = Findings()
    judge_exit(f, ctx, service, StopResult(137, 3.2))
    assert "installs no SIGQUIT handler" in f.problems[0]
    # Control: the image's own stop signal (SIGTERM), which PID 1 handles.
    ctx, service = judged(engine, image(), pid1=pid1)
    f = Findings()
    judge_exit(f, ctx, service, StopResult(137, 3.2))
    assert "handles SIGTERM but did not exit in time" in f.problems[0]


@pytest.mark.parametrize("code", list(ExitCode))
def test_graceful_exit_codes_are_described_by_exit_code_itself(code: ExitCode) -> None:
    text = describe_exit(code, StopResult(int(code), 1.0))
    assert text.startswith(f"exited {int(code)} after 1.00 s: ")
    assert text.endswith(f"(graceful's ExitCode.{code.name})")
    words = text.removeprefix(f"exited {int(code)} after 1.00 s: ").lower()
    assert len(words) > len(f"(graceful's ExitCode.{code.name})") + 10  # more than the name


def test_exit_code_words_follow_the_runtime() -> None:
    assert "drain deadline" in describe_exit(3, StopResult(3, 1.0))  # ExitCode.WORK_CUT's words
    assert "may not have been flushed" in describe_exit(4, StopResult(4, 1.0))
    # Control: codes graceful does not define, and deaths by a signal, are not ExitCode's.
    assert describe_exit(2, StopResult(2, 1.0)) == "exited 2 after 1.00 s"
    assert "ExitCode" not in describe_exit(143, StopResult(143, 1.0))


def test_a_wrapper_script_gets_the_exec_advice_only() -> None:
    """Docker's init passes SIGTERM to the shell, which dies of it: --init makes a wrapper
    that does not exec worse (143, work cut), so it is never suggested for one."""
    for pid1 in (Pid1("/bin/sh /app/run.sh"), Pid1("/bin/bash -e /start.sh")):
        text = sigkill_diagnosis(timeout=3, image=image(), pid1=pid1, sig="SIGTERM")
        assert "`exec`" in text
        assert "--init" not in text


def test_an_init_with_a_shell_child_is_named_on_exit_143(engine: Engine) -> None:
    pid1 = Pid1("/sbin/docker-init -- /app/run.sh", children=("/bin/sh /app/run.sh",))
    assert pid1.shell_child == "/bin/sh /app/run.sh"
    ctx, service = judged(engine, image(), pid1=pid1)
    f = Findings()
    judge_exit(f, ctx, service, StopResult(143, 0.2))
    assert "a shell (/bin/sh /app/run.sh), which died of it" in f.problems[0]
    assert "`exec`" in f.problems[0]
    # Control: an init whose child is the server itself, and a shell that is not under an init.
    assert (
        Pid1("/sbin/docker-init -- python3 app.py", children=("python3 app.py",)).shell_child
        is None
    )
    assert Pid1("/bin/sh /app/run.sh", children=("/bin/sh -c x",)).shell_child is None


def test_judge_inflight_says_when_nothing_was_in_flight() -> None:
    """Requests all answered before the stop prove nothing about draining."""
    ledger = Ledger()
    ledger.add(rec(Kind.WORK, 1.0, RequestOutcome.OK, status=200))  # answered at 1.1
    f = Findings()
    judge_inflight(f, ledger, stop_began=2.0)
    assert f.verdict is Verdict.INCONCLUSIVE
    assert "no request was in flight when the stop began" in f.reasons[0]
    # Control: one request answered after the stop began.
    ledger.add(Record(kind=Kind.LONG, sent=1.5, answered=2.5, outcome=RequestOutcome.OK))
    f = Findings()
    judge_inflight(f, ledger, stop_began=2.0)
    assert f.verdict is Verdict.PASS
    assert "1 still in flight when it began" in f.notes[0]


def test_long_requests_must_really_be_in_flight_at_the_stop() -> None:
    """An endpoint that ignores the duration answers the "long" requests at once."""
    quick = Ledger([rec(Kind.LONG, 1.0, RequestOutcome.OK, status=200) for _ in range(4)])
    f = Findings()
    assert judge_long_inflight(f, quick, 2.0, asked_ms=15000, target="/slow?ms=15000") == []
    assert f.verdict is Verdict.INCONCLUSIVE
    assert "none of the 4 requests for 15 s (GET /slow?ms=15000)" in f.reasons[0]
    assert "--work-url" in f.reasons[0]
    held = Ledger(
        [Record(kind=Kind.LONG, sent=1.8, answered=9.0, outcome=RequestOutcome.CLOSED)] * 4
    )
    f = Findings()
    assert len(judge_long_inflight(f, held, 2.0, asked_ms=15000, target="/slow?s=15")) == 4
    assert f.verdict is Verdict.PASS
    assert "4 requests for 15 s (GET /slow?s=15) were in flight" in f.notes[0]


def probes(t0: float, outcome: str, n: int, *, connected: bool = True) -> list[ProbeEvent]:
    return [ProbeEvent(t0 + i * 0.02, "main", outcome, None, connected) for i in range(n)]


def test_accepted_and_abandoned_connections_fail_with_numbers() -> None:
    """A listener left open with nobody serving it: probes connect, get no answer (timeout)
    and are reset when the process exits. The backlog race is a single such connection."""
    abandoned = probes(1.0, "timeout", 30) + probes(1.7, "reset", 12)
    f = Findings()
    judge_connections(f, abandoned, stop_began=1.0, exited=2.0, where="netns", check_ready=False)
    assert len(f.problems) == 1
    assert "accepted and abandoned" in f.problems[0]
    assert "30 of 42 probes got no answer within 1 s, 12 were reset" in f.problems[0]
    # Control: the backlog race, one reset among refusals, is only a note.
    race = probes(1.0, "reset", 1) + probes(1.02, "refused", 40, connected=False)
    f = Findings()
    judge_connections(f, race, stop_began=1.0, exited=2.0, where="netns", check_ready=False)
    assert f.problems == []
    assert "backlog race" in f.notes[0]
    assert "1 were reset or closed after connecting, 40 were refused" in f.notes[0]


def test_timeouts_of_a_slow_probe_path_are_not_called_abandoned() -> None:
    """When the probed request is slow even before the stop, a timeout is no evidence."""
    before = probes(0.0, "timeout", 3)
    during = probes(1.0, "timeout", 3) + probes(1.1, "refused", 40, connected=False)
    f = Findings()
    judge_connections(
        f, before + during, stop_began=1.0, exited=3.0, where="netns", check_ready=False
    )
    assert f.problems == []
    assert any("cannot be told from slow ones" in n for n in f.notes)
    # Control: the same timeouts with a fast probe path before the stop.
    f = Findings()
    fast = probes(0.0, "answered", 3)
    judge_connections(
        f, fast + during, stop_began=1.0, exited=3.0, where="netns", check_ready=False
    )
    assert any("accepted and abandoned" in p for p in f.problems)


def answered(
    kind: Kind, asked_ms: int, took_s: float, *, sent: float = 1.0, **kw: object
) -> Record:
    kw.setdefault("outcome", RequestOutcome.OK)
    return Record(kind=kind, sent=sent, answered=sent + took_s, asked_ms=asked_ms, **kw)  # type: ignore[arg-type]


def test_work_answered_sooner_than_it_asked_for_was_not_done() -> None:
    """Issue B4: an image answered every work request in flight 200 at the stop, without
    doing the work, and passed. The ledger knows what each asked for and when it was
    answered. The control: the same requests answered after their time pass."""
    stop_began = 1.5
    ledger = Ledger()
    for took in (0.502, 0.51, 0.515):  # asked 3 s, answered at the stop
        ledger.add(answered(Kind.LONG, 3000, took))
    ledger.add(answered(Kind.WORK, 20, 0.001))  # within the allowance: no finding
    ledger.add(answered(Kind.LONG, 3000, 0.5, outcome=RequestOutcome.CLOSED))  # cut, not lied
    ledger.add(answered(Kind.WORK, 1000, 0.2, sent=0.1))  # asked 1 s, 200 ms, before the stop
    f = Findings()
    judge_work_done(f, ledger, stop_began=stop_began)
    (problem,) = f.problems
    assert problem == (
        "1 request asking for 1000 ms was answered in 200 ms; 3 requests asking for 3000 ms "
        "were answered in 502-515 ms (3 of them after the stop began): the work was not done "
        "(a request answered 2xx sooner than the work it asked for; work cut at a stop must end "
        "in an error, not a success)"
    )

    honest = Ledger()
    for took in (3.0, 3.001, 3.4):
        honest.add(answered(Kind.LONG, 3000, took))
    honest.add(answered(Kind.WORK, 20, 0.021))
    control = Findings()
    judge_work_done(control, honest, stop_began=stop_began)
    assert control.problems == []


@settings(max_examples=200, deadline=None)
@given(asked=st.integers(0, 600_000), share=st.floats(0.0, 3.0))
def test_only_answers_clearly_sooner_than_asked_are_flagged(asked: int, share: float) -> None:
    """An honest answer takes at least what it asked for (the client's clock brackets the
    server's sleep): never flagged. One under 90 % less 20 ms: always."""
    record = answered(Kind.WORK, asked, asked * share / 1000)
    if share >= 1.0:
        assert not too_soon(record)
    assert too_soon(record) == (record.took_ms < 0.9 * asked - 20)
    assert not too_soon(answered(Kind.WORK, asked, 0.0, outcome=RequestOutcome.HTTP_ERROR))

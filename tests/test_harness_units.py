"""The harness's pieces that need no Docker engine: ledger, error classes, verdict logic,
report, CLI plumbing. Error classes are produced by real sockets, not by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from graceful.harness import cli
from graceful.harness.engine import ImageInfo, Pid1, StopResult, _mask, _parse_time, signal_name
from graceful.harness.load import (
    PROBE_SCRIPT,
    Kind,
    Ledger,
    LoadClient,
    Outcome,
    ProbeEvent,
    Record,
    Workload,
    describe_failures,
    parse_probe_output,
)
from graceful.harness.report import Report, ScenarioResult, format_table
from graceful.harness.scenarios import (
    SCENARIOS,
    Findings,
    judge_connections,
    judge_exit,
    judge_inflight,
    judge_report_events,
    judge_traceback,
    make_scenarios,
    sigkill_diagnosis,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def rec(kind: Kind, sent: float, outcome: Outcome, **kw: object) -> Record:
    return Record(kind=kind, sent=sent, answered=sent + 0.1, outcome=outcome, **kw)  # type: ignore[arg-type]


# --- ledger ------------------------------------------------------------------------------------


def test_ledger_counts_acks_and_windows() -> None:
    ledger = Ledger()
    ledger.add(rec(Kind.WORK, 1.0, Outcome.OK, status=200))
    ledger.add(rec(Kind.WRITE, 1.5, Outcome.OK, status=200, item_id="a"))
    ledger.add(rec(Kind.WRITE, 2.5, Outcome.RESET, item_id="b"))
    ledger.add(rec(Kind.LONG, 0.5, Outcome.CLOSED))
    ledger.add(rec(Kind.READ, 3.0, Outcome.OK, status=200))

    counts = ledger.counts()
    assert (counts.sent, counts.ok, counts.failed) == (4, 2, 2)  # the read is not load
    assert ledger.acked_ids() == ["a"]
    assert [r.item_id for r in ledger.select([Kind.WRITE], sent_before=2.0)] == ["a"]
    assert [r.kind for r in ledger.select(sent_after=2.0)] == [Kind.WRITE, Kind.READ]


def test_describe_failures_groups_by_class() -> None:
    records = [
        rec(Kind.WORK, 0, Outcome.RESET),
        rec(Kind.WORK, 0, Outcome.RESET),
        rec(Kind.WORK, 0, Outcome.HTTP_ERROR, status=503),
        rec(Kind.WORK, 0, Outcome.CLOSED),
    ]
    assert describe_failures(records) == "2 reset, 1 HTTP 503, 1 closed"


# --- error classes from real sockets -----------------------------------------------------------


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def contract_server() -> AsyncIterator[int]:
    """A minimal server for the contract: /work answers, /items acks (or lies about) ids."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        length = 0
        for h in head.split(b"\r\n"):
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":", 1)[1])
        body = await reader.readexactly(length)
        if line.startswith("POST"):
            item = json.loads(body)["id"]
            payload = json.dumps({"id": item if item != "liar" else "other"}).encode()
        else:
            payload = b"{}"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(payload), payload)
        )
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        yield port


async def test_client_records_ok_and_acks(contract_server: int) -> None:
    async with LoadClient(contract_server, workload=Workload(), id_prefix="t") as client:
        work = await client.work(5)
        ack = await client.write("x1")
        lie = await client.write("liar")
    assert work.outcome is Outcome.OK
    assert work.status == 200
    assert ack.acked
    assert ack.item_id == "x1"
    # Answered 200 but with another id: not an acknowledgement of this write.
    assert not lie.acked
    assert lie.outcome is Outcome.HTTP_ERROR
    assert client.ledger.acked_ids() == ["x1"]


async def test_refused_connection_is_classified_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound then closed: nobody listens, the kernel refuses
    async with LoadClient(port, workload=Workload()) as client:
        record = await client.work(0)
    assert record.outcome is Outcome.REFUSED


async def test_reset_and_closed_are_told_apart() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        raw = writer.get_extra_info("socket")
        # SO_LINGER 0: close() sends RST instead of FIN.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    for handler, expected in ((reset, Outcome.RESET), (close, Outcome.CLOSED)):
        server, port = await serve(handler)
        async with server, LoadClient(port, workload=Workload()) as client:
            record = await client.work(0)
        assert record.outcome is expected, record


async def test_silent_server_is_a_timeout() -> None:
    finished = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers; returns when the client hangs up
        finally:
            writer.close()
            finished.set()

    server, port = await serve(silent)
    async with server:
        async with LoadClient(port, workload=Workload(), timeout=0.2) as client:
            record = await client.work(0)
        await asyncio.wait_for(finished.wait(), 30)
    assert record.outcome is Outcome.TIMEOUT


async def test_steady_load_is_bounded_and_stops_when_the_service_is_gone(
    contract_server: int,
) -> None:
    stop = asyncio.Event()
    async with LoadClient(contract_server, workload=Workload()) as client:
        await client.steady(stop=stop, concurrency=3, ms=0, max_requests=20, max_seconds=30)
    assert len(client.ledger.records) == 20

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with LoadClient(port, workload=Workload()) as client:
        await client.steady(stop=stop, concurrency=2, max_requests=1000, max_seconds=30)
    # One refused request per worker, then each worker gives up instead of spinning.
    assert len(client.ledger.records) == 2


# --- the prober script, run for real -----------------------------------------------------------


async def test_probe_script_sees_answers_and_refusals(contract_server: int) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE_SCRIPT,
        str(contract_server),
        str(closed_port),
        "/work",
        "/readyz",
        "0.01",
        "0.2",
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    events = parse_probe_output(out.decode())
    main = [e for e in events if e.kind == "main"]
    ready = [e for e in events if e.kind == "ready"]
    assert main
    assert all(e.outcome == "answered" and e.status == 200 for e in main)
    assert ready
    assert all(e.outcome == "refused" for e in ready)


def test_parse_probe_output_skips_noise() -> None:
    text = 'hello\n{"t": 1.5, "kind": "main", "outcome": "refused", "status": null}\n{bad\n'
    assert parse_probe_output(text) == [ProbeEvent(1.5, "main", "refused", None)]


# --- judging -----------------------------------------------------------------------------------


def image(
    cmd: tuple[str, ...] = ("python3", "app.py"), entrypoint: tuple[str, ...] = ()
) -> ImageInfo:
    return ImageInfo(ref="x", id="sha", entrypoint=entrypoint, cmd=cmd, stop_signal="SIGTERM")


def test_shell_form_is_detected() -> None:
    assert image(("/bin/sh", "-c", "python3 app.py")).shell_form
    assert image((), entrypoint=("sh", "-c", "exec app")).shell_form
    assert not image(("python3", "app.py")).shell_form
    assert not image(("/bin/sh", "start.sh")).shell_form


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


def test_judge_exit_only_complains_about_unexpected_codes() -> None:
    f = Findings()
    judge_exit(f, StopResult(0, 0.1), timeout=3, image=image(), pid1=None, sig="SIGTERM")
    judge_exit(
        f,
        StopResult(3, 2.5),
        timeout=3,
        image=image(),
        pid1=None,
        sig="SIGTERM",
        expected=(0, 3),
    )
    assert f.problems == []
    judge_exit(f, StopResult(137, 3.2), timeout=3, image=image(), pid1=None, sig="SIGTERM")
    judge_exit(f, StopResult(143, 0.2), timeout=3, image=image(), pid1=None, sig="SIGTERM")
    judge_exit(
        f, StopResult(137, 0.2, oom_killed=True), timeout=3, image=image(), pid1=None, sig="SIGTERM"
    )
    assert f.problems[0].startswith("exited 137 after the full 3 s timeout")
    assert "exited 143" in f.problems[1]
    assert "default action" in f.problems[1]
    assert "OOM" in f.problems[2]


def test_judge_inflight_counts_only_requests_sent_before_the_stop() -> None:
    ledger = Ledger()
    ledger.add(rec(Kind.LONG, 1.0, Outcome.OK, status=200))
    ledger.add(rec(Kind.LONG, 1.0, Outcome.CLOSED))
    ledger.add(rec(Kind.WORK, 5.0, Outcome.REFUSED))  # after the stop: not in flight
    f = Findings()
    judge_inflight(f, ledger, stop_began=2.0)
    assert f.problems == ["in-flight requests were cut (1 of 2: 1 closed)"]


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


# --- report ------------------------------------------------------------------------------------


def result(name: str, passed: bool, *findings: str) -> ScenarioResult:
    return ScenarioResult(
        name=name,
        passed=passed,
        exit_code=0 if passed else 137,
        stop_seconds=0.1234,
        sent=10,
        ok=9,
        failed=1,
        acked=5,
        lost=0 if passed else 2,
        findings=findings,
    )


def test_json_report_has_exactly_the_contract_keys() -> None:
    report = Report(image="img", scenarios=[result("stop-idle", True), result("x", False, "bad")])
    data = json.loads(report.to_json())
    assert set(data) == {"image", "scenarios"}
    entry = data["scenarios"][1]
    assert set(entry) == {
        "name",
        "passed",
        "exit_code",
        "stop_seconds",
        "requests",
        "acked",
        "lost",
        "findings",
    }
    assert entry["requests"] == {"sent": 10, "ok": 9, "failed": 1}
    assert entry["findings"] == ["bad"]
    assert entry["stop_seconds"] == 0.123
    assert not report.passed
    assert not Report(image="img").passed


def test_table_has_a_row_per_scenario_and_full_findings() -> None:
    long = "exited 137 after the full 3 s timeout: " + "x" * 200
    text = format_table(
        "img", [result("stop-idle", True), result("stop-under-load", False, long)], width=100
    )
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.startswith("stop-under-load"))
    assert "FAIL" in row
    assert "137" in row
    assert len(row) <= 100
    assert row.endswith("…")
    assert f"  - {long}" in lines  # the full finding, below the table
    assert "1 of 2 scenarios passed" in text


# --- engine helpers and CLI --------------------------------------------------------------------


def test_signal_helpers_and_masks() -> None:
    assert signal_name("15") == "SIGTERM"
    assert signal_name("QUIT") == "SIGQUIT"
    # bits 2 (SIGINT) and 15 (SIGTERM) of SigCgt
    status = "Name:\tpython3\nSigIgn:\t0000000001001000\nSigCgt:\t0000000000004002\n"
    assert _mask(status, "SigCgt") == frozenset({2, 15})
    assert _mask(status, "SigIgn") == frozenset({13, 25})
    assert _parse_time("2025-01-02T03:04:05.5Z") == pytest.approx(1735787045.5)
    assert _parse_time("0001-01-01T00:00:00Z") is None


def test_every_scenario_is_listed_and_constructible(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["list"])) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
    assert [s.name for s in make_scenarios(SCENARIOS)] == list(SCENARIOS)
    with pytest.raises(KeyError, match="unknown scenario"):
        make_scenarios(["nope"])


def test_run_rejects_unknown_scenarios_and_missing_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["run", "--image", "x", "--scenario", "nope"])) == 2
    assert "unknown scenario nope" in capsys.readouterr().err
    assert cli.main(parser.parse_args(["run"])) == 2
    assert "--image" in capsys.readouterr().err


def test_plugin_imports_without_docker() -> None:
    # The plugin loads in every pytest run: importing it must not import the docker SDK.
    code = (
        "import sys, graceful.harness.pytest_plugin, graceful.harness.engine; "
        "print('docker' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from graceful.harness.engine import EngineUnavailable, connect

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="make engine"):
        connect(timeout=5)
    assert time.monotonic() - started < 60  # a hang guard, not a speed claim


CHAOS_TEST = """
import pytest

@pytest.mark.graceful_chaos
def test_needs_an_engine():
    pass

def test_uses_the_fixture(graceful_harness):
    pass
"""


def test_pytest_plugin_skips_without_an_engine_but_fails_in_ci(tmp_path: Path) -> None:
    (tmp_path / "test_chaos.py").write_text(CHAOS_TEST)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    env.pop("CI", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    local = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert local.returncode == 0, local.stdout + local.stderr
    assert "2 skipped" in local.stdout
    assert "make engine" in local.stdout
    ci = subprocess.run(
        args,
        cwd=tmp_path,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "CI=true and no Docker engine answers" in ci.stdout

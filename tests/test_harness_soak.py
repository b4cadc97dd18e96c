"""``graceful harness soak`` (issue 13, items 4 and 5): many rounds of faults under load, one
ledger across every restart.

The unit tier checks the seeded fault sequence, how a round's requests are judged (real
ledger records), the report and the option checks. The Docker tier runs the short soak
``make test`` keeps (one round of each fault on an example image: nothing lost, nothing
failed), and its controls: a store that does not fsync loses writes to the soak's power cut,
a server that exits at once fails accepted requests under ``docker stop``; and Ctrl-C in the
middle of a soak leaves no mount and no container.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.harness import cli
from graceful.harness.container import StopResult
from graceful.harness.load import Kind, Record, RequestOutcome
from graceful.harness.soak import FAULTS, Fault, choose_faults, fault_sequence, judge_round
from graceful.harness.soak_report import RoundResult, SoakReport
from tests.harness_servers import images_or_skip
from tests.test_harness_power import (
    HANG_GUARD,
    example_or_skip,
    harness,
    interrupt_when,
    left_by,
    require_fuse,
)

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.engine import Engine

# --- the fault sequence ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    faults=st.lists(st.sampled_from(FAULTS), min_size=1, unique=True),
    rounds=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_sequence_replays_and_gives_each_fault_its_share(
    faults: list[Fault], rounds: int, seed: int
) -> None:
    sequence = fault_sequence(faults, rounds, seed)
    assert sequence == fault_sequence(faults, rounds, seed)
    assert len(sequence) == rounds
    n = len(faults)
    for start in range(0, rounds - n + 1, n):  # every whole cycle holds each fault once
        assert sorted(sequence[start : start + n]) == sorted(faults)


def test_the_seed_changes_the_order() -> None:
    orders = {tuple(fault_sequence(FAULTS, 12, seed)) for seed in range(5)}
    assert len(orders) > 1


def test_faults_are_chosen_by_name() -> None:
    assert choose_faults("kill, stop,kill") == ((Fault.KILL, Fault.STOP), "")
    with pytest.raises(ValueError, match="unknown fault 'reboot'; known: stop, stop-short"):
        choose_faults("stop,reboot")
    with pytest.raises(ValueError, match="no fault named"):
        choose_faults(" , ")
    every, left_out = choose_faults(None)
    if left_out:  # no FUSE here: everything else, and why
        assert every == tuple(f for f in FAULTS if f is not Fault.POWER_LOSS)
        assert left_out.startswith("power-loss left out: needs a power-loss volume")
    else:
        assert every == FAULTS


# --- judging a round ---------------------------------------------------------------------------


def record(sent: float, answered: float, ok: bool = True, kind: Kind = Kind.WORK) -> Record:
    return Record(
        kind=kind,
        sent=sent,
        answered=answered,
        outcome=RequestOutcome.OK if ok else RequestOutcome.RESET,
        status=200 if ok else None,
    )


RECORDS = [
    record(1.0, 2.0, kind=Kind.WRITE),  # acknowledged before the fault
    record(1.5, 2.5, ok=False),  # failed while the service was up
    record(9.0, 10.5, ok=False),  # in flight at the fault (10.0), then reset
    record(9.5, 10.2, kind=Kind.WRITE),  # in flight, answered
    record(11.0, 11.1, kind=Kind.READ),  # a check, not load
]


def test_after_a_stop_every_request_sent_before_it_must_be_answered() -> None:
    result = judge_round(RECORDS, Fault.STOP, 10.0, StopResult(exit_code=0, seconds=0.3))
    assert (result.sent, result.failed, result.cut, result.acked) == (4, 2, 0, 2)
    assert result.problems == (
        "2 of 4 accepted requests failed (2 reset, sent 1000-8500 ms before the stop)",
    )


def test_a_kill_cuts_what_is_in_flight_without_failing_it() -> None:
    """Control of the above: the same records under a kill fail only the request that
    failed before it."""
    result = judge_round(RECORDS, Fault.KILL, 10.0, StopResult(exit_code=137, seconds=0.2))
    assert (result.sent, result.failed, result.cut, result.acked) == (4, 1, 1, 2)
    assert result.problems == ("1 of 2 accepted requests failed (1 reset)",)
    clean = [r for r in RECORDS if r.answered > 2.5 or r.ok]
    assert judge_round(clean, Fault.KILL, 10.0, StopResult(137, 0.2)).passed


@pytest.mark.parametrize(
    ("fault", "code", "finding"),
    [
        (Fault.STOP, 137, "exited 137 after 3.00 s: the stop did not end in time, SIGKILL did"),
        (Fault.STOP_SHORT, 143, "exited 143 after 3.00 s"),
        (Fault.KILL, 0, "(graceful's ExitCode.OK) (expected 137)"),
        (Fault.SIGNAL_STORM, 1, "(expected 0 or 5)"),
    ],
)
def test_an_exit_the_fault_does_not_explain_fails_the_round(
    fault: Fault, code: int, finding: str
) -> None:
    result = judge_round([], fault, 0.0, StopResult(exit_code=code, seconds=3.0))
    assert finding in result.problems[0]
    assert judge_round([], Fault.SIGNAL_STORM, 0.0, StopResult(5, 0.1)).passed
    assert judge_round([], fault, 0.0, None).problems == ("the container did not exit",)


# --- the report -----------------------------------------------------------------------------


def test_the_report_adds_up_per_fault_and_fails_on_any_loss(tmp_path: Path) -> None:
    report = SoakReport(image="img", seed=7, faults=(Fault.STOP, Fault.KILL))
    report.rounds += [
        RoundResult(index=1, fault=Fault.KILL, exit_code=137, stop_seconds=0.2, sent=10,
                    cut=2, acked=5),
        RoundResult(index=2, fault=Fault.STOP, exit_code=0, stop_seconds=0.4, sent=12, acked=6),
        RoundResult(index=3, fault=Fault.KILL, exit_code=137, stop_seconds=0.3, sent=8, acked=4),
    ]  # fmt: skip
    assert report.exit_code() == 0
    table = report.table()
    assert "seed 7 (replay: --seed 7 --rounds 3 --faults stop,kill)" in table
    assert "PASS: 3 rounds, 0 of 15 acknowledged writes lost, 0 of 30 requests failed" in table
    kill_row = next(line for line in table.splitlines() if line.startswith("kill "))
    assert kill_row.split() == ["kill", "2", "18", "0", "2", "9", "0", "137", "x2", "0.30"]

    report.rounds.append(
        RoundResult(index=4, fault=Fault.STOP, exit_code=0, stop_seconds=0.3, acked=3, lost=2,
                    problems=("2 acknowledged writes lost: ids a, b: ...",)),
    )  # fmt: skip
    assert report.exit_code() == 1
    assert "FAIL round 4/4 stop: exit 0 in 0.30 s" in report.table()
    path = tmp_path / "soak.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert {"image", "seed", "rounds", "totals"} <= set(data)
    assert (data["image"], data["seed"], data["passed"]) == ("img", 7, False)
    assert {"fault", "exit_code", "stop_seconds", "acked", "lost", "failed"} <= set(
        data["rounds"][0]
    )
    assert data["totals"] == {
        "rounds": 4, "sent": 30, "acked": 18, "lost": 2, "failed": 0, "cut": 2,
    }  # fmt: skip
    assert data["by_fault"]["kill"]["exit_codes"] == {"137": 2}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--faults", "stop,reboot"], "--faults: unknown fault 'reboot'"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--stop-timeout", "0"], "--stop-timeout: 0 is out of range (1 to 86400)"),
        (
            ["--faults", "kill,power-loss", "--volume-path", ""],
            "power-loss cannot run here: it needs a state volume to cut the power under",
        ),
    ],
)
def test_soak_rejects_options_it_cannot_use(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    """Refused before any engine is asked: exit 2 with the reason."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["soak", "--image", "x", *options])) == 2
    assert message in capsys.readouterr().err


# --- on a real engine ------------------------------------------------------------------------


def soak(*args: str, timeout: float = HANG_GUARD) -> tuple[int, str, str]:
    proc = harness("soak", "--stop-timeout", "3", *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.docker
@pytest.mark.slow
def test_a_short_soak_on_an_example_loses_nothing(graceful_engine: Engine, tmp_path: Path) -> None:
    """The soak ``make test`` keeps: one round of each fault (power-loss included where FUSE
    is available) on the uvicorn example: every acknowledged write kept across the restarts,
    no accepted request failed, exit 0; the seed is printed first, the JSON has every round."""
    example_or_skip(graceful_engine, "graceful-example-asgi")
    faults, _ = choose_faults(None)
    path = tmp_path / "soak.json"
    code, out, err = soak(
        "--image", "graceful-example-asgi", "--rounds", str(len(faults)), "--seed", "13",
        "--json", str(path),
    )  # fmt: skip
    assert code == 0, out + err
    assert err.startswith("config: ")  # which [tool.graceful.harness] table applied (none)
    progress = err.split("\n", 1)[1]
    assert progress.startswith(
        f"graceful harness soak: graceful-example-asgi, seed 13, {len(faults)}"
    )
    data = json.loads(path.read_text())
    assert data["seed"] == 13
    assert sorted(r["fault"] for r in data["rounds"]) == sorted(faults)
    assert data["totals"]["lost"] == 0
    assert data["totals"]["failed"] == 0
    assert data["totals"]["acked"] >= 5 * len(faults)
    for r in data["rounds"]:
        assert r["exit_code"] == (
            0 if r["fault"] in ("stop", "stop-short", "signal-storm") else 137
        )
    assert "PASS: " in out


@pytest.mark.docker
@pytest.mark.slow
def test_the_soak_finds_writes_a_power_cut_loses(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Control: the image that acknowledges after write() without fsync keeps every write
    across the soak's kill and loses them to its power cut: exit 1, the round says why."""
    require_fuse()
    code, out, err = soak(
        "--image", test_images["no-fsync"].ref, "--rounds", "2", "--seed", "1",
        "--faults", "kill,power-loss",
    )  # fmt: skip
    assert code == 1, out + err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert rows["kill"][6] == "0"  # lost
    assert int(rows["power-loss"][6]) > 0
    assert "acknowledged writes lost: ids " in out
    assert ": the service acknowledged before fsync" in out


@pytest.mark.docker
@pytest.mark.slow
def test_the_soak_fails_accepted_requests_that_were_cut(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Control: a server that exits the moment SIGTERM arrives drops what it accepted:
    ``docker stop`` under the soak's load fails those requests, exit 1."""
    code, out, err = soak(
        "--image", test_images["exit-at-once"].ref, "--rounds", "1", "--faults", "stop"
    )  # fmt: skip
    assert code == 1, out + err
    assert "accepted requests failed" in out
    assert "FAIL: 1 rounds" in out


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_during_a_soak_leaves_no_mount_and_no_container(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Ctrl-C after the first round of a long soak on the power-loss volume: exit 130, the
    mount and every container the soak started are gone."""
    require_fuse()
    proc = harness(
        "soak", "--image", test_images["good"].ref, "--rounds", "50", "--stop-timeout", "3",
        "--faults", "kill,power-loss",
    )  # fmt: skip
    interrupt_when(proc, " round 1/50 ")
    assert left_by(graceful_engine, proc.pid) == []


@pytest.fixture(scope="module")
def test_images(graceful_engine: Engine) -> dict[str, ImageInfo]:
    return images_or_skip(graceful_engine)

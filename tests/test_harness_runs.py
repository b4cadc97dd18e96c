"""graceful.harness.runs: whether the run that labelled an object is still going, from real
processes of this machine."""

from __future__ import annotations

import subprocess
import sys

from graceful.harness.runs import RunState, owner, run_state


def test_this_process_is_a_live_run() -> None:
    assert run_state(owner()) is RunState.ALIVE


def test_a_run_whose_process_ended_is_over() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    label = owner(child.pid)
    assert run_state(label) is RunState.ALIVE
    assert child.stdin is not None
    child.stdin.close()
    child.wait(30)
    assert run_state(label) is RunState.OVER


def test_a_reused_pid_is_not_the_run() -> None:
    """Another process that got the run's pid has another start time."""
    host, boot, pid, started = owner().split("/")
    assert run_state(f"{host}/{boot}/{pid}/{int(started) - 1}") is RunState.OVER


def test_runs_of_other_machines_or_boots() -> None:
    host, boot, pid, started = owner().split("/")
    assert run_state(f"elsewhere/{boot}/{pid}/{started}") is RunState.UNKNOWN
    assert run_state(f"{host}/another-boot/{pid}/{started}") is RunState.OVER
    assert run_state(None) is RunState.UNKNOWN  # labelled before owners were recorded
    assert run_state("garbage") is RunState.UNKNOWN

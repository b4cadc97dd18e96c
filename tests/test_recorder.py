"""``graceful.recorder``: the account of one stop, its exit code and its report."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from graceful.budget import Budget
from graceful.config import Config
from graceful.hooks import HookOutcome, Outcome, Phase
from graceful.metrics import Metrics
from graceful.recorder import ShutdownRecorder, rounded
from graceful.status import ExitCode


def make_recorder() -> tuple[ShutdownRecorder, CollectorRegistry]:
    registry = CollectorRegistry()
    return ShutdownRecorder(Metrics(registry), structlog.get_logger("graceful")), registry


def outcome(kind: Outcome, name: str = "hook", phase: Phase = Phase.FLUSH) -> HookOutcome:
    return HookOutcome(name, phase, kind, 0.25, None if kind is Outcome.OK else "why")


# --- exit code ------------------------------------------------------------------------------------

FAILING = {Outcome.FAILED, Outcome.TIMED_OUT}


@settings(max_examples=200, deadline=None)
@given(
    crashed=st.booleans(),
    hooks=st.lists(st.sampled_from(list(Outcome)), max_size=4),
    drained=st.booleans(),
    cut=st.integers(min_value=0, max_value=3),
)
def test_most_serious_cause_wins(
    crashed: bool, hooks: list[Outcome], drained: bool, cut: int
) -> None:
    """1 (error) > 4 (hook failed) > 3 (work cut) > 0; a skipped hook is not a failed one."""
    recorder, _ = make_recorder()
    with capture_logs():
        for kind in hooks:
            recorder.hook(outcome(kind))
    code = recorder.exit_code(crashed=crashed, drained=drained, cut=cut)
    if crashed:
        assert code is ExitCode.ERROR
    elif FAILING & set(hooks):
        assert code is ExitCode.HOOK_FAILED
    elif cut or not drained:
        assert code is ExitCode.WORK_CUT
    else:
        assert code is ExitCode.OK


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (Outcome.SKIPPED, ExitCode.OK),
        (Outcome.OK, ExitCode.OK),
        (Outcome.FAILED, ExitCode.HOOK_FAILED),  # control: a failure does count
        (Outcome.TIMED_OUT, ExitCode.HOOK_FAILED),
    ],
)
def test_only_failed_and_timed_out_hooks_fail_the_stop(kind: Outcome, expected: ExitCode) -> None:
    recorder, _ = make_recorder()
    with capture_logs():
        recorder.hook(outcome(kind, name="flush_db"))
    assert recorder.exit_code(crashed=False, drained=True, cut=0) is expected
    assert recorder.failed_hooks() == ([] if expected is ExitCode.OK else ["flush_db"])


# --- hooks, flushes, phases: logs and metrics -----------------------------------------------------


def test_each_hook_outcome_is_logged_and_only_failures_are_counted() -> None:
    recorder, registry = make_recorder()
    with capture_logs() as logs:
        recorder.hook(outcome(Outcome.OK, "a"))
        recorder.hook(outcome(Outcome.SKIPPED, "b"))
        recorder.hook(outcome(Outcome.FAILED, "c", Phase.CLOSE))
        recorder.hook(outcome(Outcome.TIMED_OUT, "d"))
    assert [(e["event"], e["log_level"], e["hook"]) for e in logs] == [
        ("hook.finished", "info", "a"),
        ("hook.skipped", "warning", "b"),
        ("hook.failed", "error", "c"),
        ("hook.timed_out", "error", "d"),
    ]
    assert logs[2]["error"] == "why"

    def failed(phase: str, kind: str) -> float | None:
        return registry.get_sample_value(
            "graceful_hooks_failed_total", {"phase": phase, "outcome": kind}
        )

    assert failed("close", "failed") == 1
    assert failed("flush", "timed_out") == 1
    assert failed("flush", "ok") is None
    assert failed("flush", "skipped") is None


def test_flushed_items_add_up_in_the_account_and_the_counter() -> None:
    recorder, registry = make_recorder()
    recorder.flushed_items(3)
    recorder.flushed_items(4)
    assert recorder.flushed == 7
    assert registry.get_sample_value("graceful_flushed_items_total") == 7


def test_phase_is_recorded_rounded_and_logged_with_its_share() -> None:
    recorder, registry = make_recorder()
    budget = Budget.plan(Config(stop_timeout=10, margin=0.001), start=0.0)
    with capture_logs() as logs:
        recorder.phase(Phase.DRAIN, 2.000049, budget, time_left=7.99995)
    assert recorder.phase_seconds == {"drain": 2.0}
    assert registry.get_sample_value(
        "graceful_shutdown_phase_seconds", {"phase": "drain"}
    ) == pytest.approx(2.000049)
    (entry,) = logs
    assert entry == {
        "event": "phase.finished",
        "log_level": "info",
        "phase": "drain",
        "seconds": 2.0,
        "budget_share": 0.2,
        "time_left_s": 8.0,
    }


# --- the report -----------------------------------------------------------------------------------


def report(recorder: ShutdownRecorder, code: ExitCode, *, now: float) -> MutableMapping[str, Any]:
    budget = Budget.plan(Config(stop_timeout=10, margin=1), start=100.0)
    with capture_logs() as logs:
        recorder.report(
            code,
            reason="SIGTERM",
            budget=budget,
            now=now,
            stop_timeout=10.0,
            inflight_at_signal=5,
            drained=False,
            cut=2,
            zombies_reaped=1,
        )
    (entry,) = logs
    return entry


def test_report_has_every_field_an_operator_reads() -> None:
    recorder, _ = make_recorder()
    with capture_logs():
        recorder.hook(outcome(Outcome.OK, "a"))
        recorder.hook(outcome(Outcome.TIMED_OUT, "slow_flush"))
        recorder.hook(outcome(Outcome.SKIPPED, "c"))
        recorder.phase(Phase.DRAIN, 0.30000000000000004, Budget(0, 0, 9, 9, 9), 1.0)
    recorder.flushed_items(12)
    recorder.leftovers.append("Task-7 (poll)")
    recorder.signals.append("SIGTERM")

    entry = report(recorder, ExitCode.HOOK_FAILED, now=104.5)
    assert entry == {
        "event": "shutdown.report",
        "log_level": "warning",
        "reason": "SIGTERM",
        "exit_code": 4,
        "exit_status": "hook_failed",
        "seconds": 4.5,
        "stop_timeout": 10.0,
        "budget_share": 0.5,  # 4.5 s of the 9 s before the exit deadline
        "overran": False,
        "phases": {"drain": 0.3},
        "inflight_at_signal": 5,
        "drained": False,
        "cancelled": 2,
        "flushed": 12,
        "hooks": {"ok": 1, "failed": 0, "timed_out": 1, "skipped": 1},
        "leftover_tasks": ["Task-7 (poll)"],
        "background_cancelled": [],
        "failed_hooks": ["slow_flush"],
        "signals": ["SIGTERM"],
        "zombies_reaped": 1,
    }


def test_report_of_a_clean_stop_is_info_and_overran_is_past_the_exit_deadline() -> None:
    recorder, _ = make_recorder()
    clean = report(recorder, ExitCode.OK, now=109.0)  # exactly at the exit deadline
    assert (clean["log_level"], clean["exit_code"], clean["overran"]) == ("info", 0, False)
    late = report(recorder, ExitCode.OK, now=109.5)
    assert late["overran"] is True


@pytest.mark.parametrize(
    ("seconds", "logged"),
    [(0.1 + 0.2, 0.3), (1.23456, 1.2346), (2.00004, 2.0), (0.0, 0.0), (12.5, 12.5)],
)
def test_rounded_to_a_tenth_of_a_millisecond(seconds: float, logged: float) -> None:
    assert rounded(seconds) == logged


def test_rounding_is_needed() -> None:
    """Control: the float sum the logs would otherwise show."""
    assert 0.1 + 0.2 != 0.3
    assert str(0.1 + 0.2) == "0.30000000000000004"

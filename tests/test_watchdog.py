"""No path in a stop outlives the exit deadline: blocked loops, blocking hooks, stuck generators.

Each case runs a real service in a child process, sends it a real SIGTERM with a 2 s budget and
checks that it is gone before the SIGKILL would come, with an exit code and a last log line that
say what happened. The controls run the same service without the watchdog (bare ``serve``) and
show the fault: the process outlives its budget.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support import APPS, ServiceProcess

APP = APPS / "stuck_app.py"
STOP_TIMEOUT = 2.0


def start(mode: str, **env: str) -> ServiceProcess:
    settings = {"APP_MODE": mode, "GRACEFUL_STOP_TIMEOUT": str(STOP_TIMEOUT)}
    settings.update(env)
    service = ServiceProcess.python(APP, env=settings)
    service.wait_for("APP serving")
    return service


def stop(service: ServiceProcess) -> tuple[int, float]:
    """SIGTERM, then the exit code and the seconds it took (a guard of 3x the budget)."""
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    code = service.wait(timeout=STOP_TIMEOUT * 3)
    return code, time.monotonic() - started


@pytest.mark.parametrize("mode", ["blocking-hook", "blocked-loop"])
def test_a_blocked_loop_ends_at_the_deadline_with_exit_6(mode: str) -> None:
    with start(mode) as service:
        code, seconds = stop(service)
        assert code == 6, service.output()
        assert seconds < STOP_TIMEOUT  # gone before docker's SIGKILL
        overran = service.wait_event("shutdown.overran")
        assert overran["exit_code"] == 6
        assert any("block" in frame for frame in overran["main_thread_stack"])
        if mode == "blocking-hook":
            assert overran["running_hook"] == ["block"]
            assert overran["phase"] == "flush"
        assert "shutdown.report" not in service.event_names()  # never a claim of exit 0


@pytest.mark.parametrize("mode", ["blocking-hook", "blocked-loop"])
def test_control_without_the_watchdog_a_blocked_loop_outlives_the_budget(mode: str) -> None:
    with start(mode, APP_RUNNER="serve") as service:
        service.signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            service.wait(timeout=STOP_TIMEOUT * 2)


def test_a_suspended_generator_that_awaits_in_finally_is_cut_at_the_deadline() -> None:
    with start("asyncgen") as service:
        code, seconds = stop(service)
        assert seconds < STOP_TIMEOUT
        assert code == 3, service.output()  # its finally was cut: work cut, said so
        assert "APP generator-closing" in service.lines
        assert "APP generator-closed" not in service.lines
        assert "shutdown.asyncgens_abandoned" in service.event_names()
        assert service.wait_event("shutdown.report")["exit_code"] == 3


def test_control_a_suspended_generator_outlives_the_budget_under_asyncio_run() -> None:
    with start("asyncgen", APP_RUNNER="serve") as service:
        service.signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            service.wait(timeout=STOP_TIMEOUT * 2)


def test_plain_functions_work_as_hooks() -> None:
    with start("plain-hook") as service:
        code, _ = stop(service)
        assert code == 0, service.output()
        report = service.wait_event("shutdown.report")
        assert report["hooks"]["ok"] == 2
        assert "APP lambda-ran" in service.lines


def test_a_hook_that_blocks_past_its_timeout_is_reported_timed_out() -> None:
    with start("slow-hook") as service:
        code, _ = stop(service)
        assert code == 4, service.output()
        timed_out = service.wait_event("hook.timed_out")
        assert timed_out["hook"] == "slow"
        assert "blocked the event loop" in timed_out["error"]


def test_untracked_tasks_are_named_when_cancelled_and_count_as_cut_work() -> None:
    with start("leftover") as service:
        code, _ = stop(service)
        assert code == 3, service.output()
        leftover = service.wait_event("tasks.leftover_cancelled")
        assert any("untracked-upload" in t for t in leftover["tasks"])
        report = service.wait_event("shutdown.report")
        assert report["exit_status"] == "work_cut"
        assert any("untracked-upload" in t for t in report["leftover_tasks"])


def test_a_late_signal_while_leftovers_are_cancelled_does_not_kill_the_process() -> None:
    with start("late-signal") as service:
        code, _ = stop(service)
        assert code == 3, service.output()  # not -15: our handler was still in place
        assert service.wait_event("shutdown.report")["exit_code"] == 3


def test_after_run_returns_the_original_handlers_are_back() -> None:
    service = ServiceProcess.python(APP, env={"APP_MODE": "embed"})
    with service:
        assert service.wait() == 0, service.output()
        assert "APP handlers True True" in service.lines


def test_a_blocking_atexit_handler_after_a_sigterm_stop_ends_at_the_deadline() -> None:
    """The stop itself is clean; then an atexit handler blocks during interpreter teardown.
    After SIGTERM (the supervisor ends us) the watchdog stays armed through teardown: exit 6
    before SIGKILL (it used to log exit 0 and hang until SIGKILL)."""
    with start("atexit") as service:
        code, seconds = stop(service)
        assert code == 6, service.output()
        assert seconds < STOP_TIMEOUT
        assert service.wait_event("shutdown.report")["exit_code"] == 0
        assert "shutdown.overran" in service.event_names()


def test_control_after_ctrl_c_an_embedding_program_may_go_on_past_the_deadline() -> None:
    """SIGINT (a person at a terminal) disarms the watchdog when run() returns: what the
    program does next is its own business, so the same atexit handler runs to its end."""
    with start("atexit") as service:
        service.signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            service.wait(timeout=STOP_TIMEOUT * 2)

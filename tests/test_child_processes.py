"""``multiprocessing`` children the app leaves running do not hold the exit (issue 18, fault 6).

At exit ``multiprocessing`` joins every child that is not a daemon, for as long as it runs: a
worker whose app started one hung until it was killed at its deadline (exit 6). Now the runtime
stops such children after the close phase (SIGTERM, the rest of the budget, SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_serve import report, serving

pytestmark = pytest.mark.slow


def child_pids(output: str) -> list[int]:
    return [int(line.split()[2]) for line in output.splitlines() if line.startswith("APP child")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("ignores_term", [False, True], ids=["child-stops", "child-ignores-term"])
def test_a_non_daemon_child_is_stopped_and_the_stop_exits_0(
    workers: str, ignores_term: bool
) -> None:
    """1. The app's lifespan starts a non-daemon ``multiprocessing`` child that sleeps 60 s
    (and, in one case, ignores SIGTERM). 2. SIGTERM. Result: exit 0 within the budget, not 6
    at the deadline; ``shutdown.children_stopped`` names the child; no child is left."""
    env = {"APP_CHILD_IGNORES_TERM": "1" if ignores_term else "0"}
    with serving("mp_children_app:app", "--workers", workers, "--stop-timeout", "6", env=env) as (
        service,
        _port,
    ):
        service.wait_for("APP child")
        if workers == "2":
            service.wait_count("worker.ready", 2)
            deadline = time.monotonic() + 30  # a hang guard: a failure that says why
            while len(child_pids(service.output())) < 2:
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.05)
        began = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
        took = time.monotonic() - began
    assert report(service)["exit_code"] == 0
    assert "shutdown.children_stopped" in service.event_names()
    # SIGTERM ends the child at once; one that ignores it is killed at the exit deadline.
    assert took < (5.5 if ignores_term else 2.0)
    for pid in child_pids(service.output()):
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)


def test_control_multiprocessing_holds_a_plain_exit_for_as_long_as_the_child_runs() -> None:
    """The control: plain Python whose non-daemon child sleeps 3 s takes 3 s to exit."""
    code = (
        "import multiprocessing, time\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.get_context('spawn').Process(target=time.sleep, args=(3,)).start()\n"
    )
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert time.monotonic() - began >= 3.0

"""A worker's death in ``graceful serve --workers N`` shows in the exit code (issue 18, faults 4
and 5): requests it had in flight were cut, and a slot that keeps failing fails the service.

Old code: a worker SIGKILLed mid-request lost its requests silently (the next stop exited 0
with a clean report, only a ``worker.exited`` warning said so), and a slot that crash-looped
after the others were ready kept ``/readyz`` at 503 and ``/livez`` at 200 forever.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from graceful.status import ExitCode
from tests.test_supervisor import Container, get, get_in_thread, metric

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("after", [1.5, 0.3], ids=["after-1.5s", "after-0.3s"])
def test_a_worker_killed_with_requests_in_flight_makes_the_stop_exit_3(after: float) -> None:
    """1. Four 4 s requests in flight across two workers; their in-flight gauge is written
    (every 0.1 s; it was once a second, and a kill 0.3 s in found none: found by attack).
    2. SIGKILL worker 0 (its clients get EOF). 3. It is replaced; SIGTERM.
    Result: ``worker.requests_lost`` names the requests, the metric counts them, and the stop,
    clean by itself, exits 3 with ``requests_lost`` in the report. (The control, a worker
    killed while idle, exits 0: ``test_supervisor.test_a_worker_killed_while_serving_...``.)"""
    with Container() as container:
        pids = container.wait_ready()
        calls = [get_in_thread(container.url("/work?ms=4000")) for _ in range(4)]
        line = container.wait_nth_line("APP work started", 4)
        busy = int(line.rsplit("pid=", 1)[1])  # a worker with a request (the kernel chose)
        index = next(i for i, pid in pids.items() if pid == busy)
        time.sleep(after)  # each worker writes its in-flight gauge every 0.1 s
        os.kill(busy, signal.SIGKILL)
        lost = container.service.wait_event("worker.requests_lost")
        container.service.wait_count("worker.ready", 3)
        _, metrics, _ = get(container.url("/metrics", admin=True))
        for thread, _ in calls:
            thread.join(10)
        assert container.stop() == ExitCode.WORK_CUT
    assert lost["worker"] == index
    assert lost["requests"] >= 1
    assert lost["status"] == "killed by SIGKILL"
    assert metric(metrics.decode(), "graceful_worker_requests_lost_total") == lost["requests"]
    report = container.report()
    assert report["requests_lost"] == lost["requests"]
    assert report["exit_code"] == 3
    assert all(w["exit_code"] == 0 for w in report["workers"])  # the stop itself was clean


def test_a_slot_that_crash_loops_after_the_others_are_ready_fails_the_service(
    tmp_path: Path,
) -> None:
    """1. Two workers ready. 2. The app stops importing (``APP_FAIL_FILE``), then worker 1 is
    killed: each replacement fails at import. Result: after 5 quick failures in a row
    ``worker.crash_loop`` and the service stops with exit 7, instead of a ``/readyz`` that
    stays 503 forever. Control: the same kill without the import failure is replaced and the
    service goes on (``test_supervisor.test_a_worker_killed_while_serving_...``)."""
    fail_file = tmp_path / "fail"
    with Container(env={"APP_FAIL_FILE": str(fail_file)}) as container:
        pids = container.wait_ready()
        fail_file.touch()
        os.kill(pids[1], signal.SIGKILL)
        code = container.service.wait(60)
    assert code == ExitCode.WORKER_FAILED, container.service.output()
    (loop,) = container.events("worker.crash_loop")
    assert loop["worker"] == 1
    assert loop["failures"] == 5
    assert container.report()["exit_code"] == 7

"""A service at its descriptor limit still stops cleanly: nothing on the stop path needs a new
descriptor, and a metric that cannot be written never ends a stop.

The fault (issue 18, #1): ``graceful serve --workers 2`` under ``RLIMIT_NOFILE`` 128, six 2 s
requests in flight and 400 idle connections to the main port. At SIGTERM every worker died at
its first phase: ``recorder.phase`` wrote ``graceful_shutdown_phase_seconds``, whose first value
under prometheus-client's multiprocess mode opens a file, and the open failed with EMFILE. 0 to
4 of the 6 requests were answered, exit 1. One process (no multiprocess files) answered 6/6.

Real processes under ``prlimit``, real sockets, a real SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from graceful.budget import Budget
from graceful.hooks import Phase
from graceful.metrics import Metrics
from graceful.recorder import ShutdownRecorder
from tests.support import ServiceProcess, free_port

pytestmark = pytest.mark.slow

APP = "tests.apps.workers_app:app"
NOFILE = 128
IDLE = 400
IN_FLIGHT = 6
HANG_GUARD = 30.0


def serve(port: int, workers: int) -> ServiceProcess:
    argv = [
        "prlimit",
        f"--nofile={NOFILE}:{NOFILE}",  # inherited by the supervisor's workers
        sys.executable,
        "-m",
        "graceful",
        "serve",
        APP,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {
        "GRACEFUL_STOP_TIMEOUT": "4",
        "GRACEFUL_ACCESS_LOG": "off",
        "APP_FAILING_HOOK_WORKER": "none",  # no worker index matches: every hook succeeds
    }
    return ServiceProcess(argv, env=env)


def request(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def wait_serving(proc: ServiceProcess, port: int) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while True:
        assert proc.proc.poll() is None, proc.output()
        try:
            if request(port, "/work?ms=0").endswith(b"done"):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.05)


def wait_count_lines(proc: ServiceProcess, needle: str, count: int) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while sum(needle in line for line in proc.lines) < count:
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.02)


def open_descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing (the kernel completes them into the backlog)."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            for _ in range(count)
        ]
        yield socks


def stop_at_the_limit(workers: int) -> tuple[int, list[bytes], ServiceProcess, int]:
    """Serve, put 6 slow requests in flight and 400 idle connections, SIGTERM.

    Returns the exit code, the answers, the service and the most descriptors one serving
    process held before the signal.
    """
    port = free_port()
    proc = serve(port, workers)
    try:
        wait_serving(proc, port)
        answers: list[bytes] = []
        clients = [
            threading.Thread(target=lambda: answers.append(request(port, "/work?ms=2000")))
            for _ in range(IN_FLIGHT)
        ]
        for client in clients:
            client.start()
        wait_count_lines(proc, "APP work started", IN_FLIGHT)
        with idle_connections(port, IDLE):
            pids = [e["pid"] for e in proc.events() if e.get("event") == "worker.started"]
            pids = pids or [proc.pid]
            # Give the servers time to accept what they can: up to their limit.
            deadline = time.monotonic() + 5
            most = 0
            while time.monotonic() < deadline and most < NOFILE - 4:
                most = max(open_descriptors(pid) for pid in pids)
                time.sleep(0.05)
            proc.signal(signal.SIGTERM)
            code = proc.wait(HANG_GUARD)
        for client in clients:
            client.join(HANG_GUARD)
        return code, answers, proc, most
    finally:
        proc.kill()


def test_workers_at_the_descriptor_limit_finish_every_request() -> None:
    code, answers, proc, most = stop_at_the_limit(workers=2)
    # The condition is real: a worker was at its limit when the signal came.
    assert most >= NOFILE - 4, most
    assert len(answers) == IN_FLIGHT, answers
    assert all(a.endswith(b"done") for a in answers), answers
    assert code == 0, proc.output()
    workers = [e for e in proc.events() if e.get("event") == "worker.shutdown.report"]
    assert len(workers) == 2, proc.output()
    assert all(w["exit_code"] == 0 for w in workers), proc.output()
    assert "metrics.update_failed" not in proc.event_names()  # nothing needed a descriptor


def test_control_one_process_at_the_descriptor_limit_finishes_every_request() -> None:
    code, answers, proc, most = stop_at_the_limit(workers=1)
    assert most >= NOFILE - 4, most
    assert len(answers) == IN_FLIGHT, answers
    assert all(a.endswith(b"done") for a in answers), answers
    assert code == 0, proc.output()


# -- the mechanism, in one process at its limit --------------------------------------------

_AT_THE_LIMIT = textwrap.dedent(
    """
    import os, resource, sys
    from prometheus_client import CollectorRegistry, Gauge
    from graceful.budget import Budget
    from graceful.hooks import Phase
    from graceful.logs import get_logger
    from graceful.metrics import Metrics
    from graceful.recorder import ShutdownRecorder

    recorder = ShutdownRecorder(Metrics(CollectorRegistry()), get_logger())  # at startup
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass  # every descriptor taken, as by a server's idle connections
    budget = Budget(0.0, 0.0, 8.0, 8.5, 9.0)
    recorder.phase(Phase.UNREADY, 0.001, budget, 9.0)  # no file to open: pre-created
    print("phase recorded", flush=True)
    try:
        Gauge("late", "created at the stop", ["x"], registry=CollectorRegistry(),
              multiprocess_mode="max").labels("y").set(1)
    except OSError as exc:
        print("late metric:", exc.errno, flush=True)
    """
)


def test_a_metric_made_at_startup_needs_no_descriptor_at_the_stop(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _AT_THE_LIMIT],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "phase recorded" in out.stdout, out.stdout + out.stderr
    # The control: a metric whose first value comes at the stop opens a file, and fails.
    assert f"late metric: {errno.EMFILE}" in out.stdout, out.stdout + out.stderr


class Failing:
    """A metric whose every update fails as a multiprocess file at the limit does."""

    def labels(self, *_: object) -> Failing:
        raise OSError(errno.EMFILE, "Too many open files")

    def inc(self, *_: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error


def test_a_failing_metric_is_logged_once_and_the_stop_goes_on() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.phase_seconds = Failing()  # type: ignore[assignment]
    metrics.flushed_items = Failing()  # type: ignore[assignment]
    log = Log()
    recorder = ShutdownRecorder(metrics, log)
    budget = Budget(0.0, 0.0, 8.0, 8.5, 9.0)
    for phase in Phase:
        recorder.phase(phase, 0.01, budget, 9.0)
    recorder.flushed_items(3)
    assert recorder.phase_seconds.keys() == {str(p) for p in Phase}
    assert recorder.flushed == 3
    failed = [fields for event, fields in log.events if event == "metrics.update_failed"]
    assert len(failed) == 1
    assert "Too many open files" in failed[0]["error"]
    # The control: the metric does raise when used directly.
    with pytest.raises(OSError):
        metrics.phase_seconds.labels("drain")


def test_every_label_of_the_stop_exists_from_startup() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for phase in Phase:
        assert registry.get_sample_value("graceful_shutdown_phase_seconds", {"phase": phase}) == 0
        for outcome in ("failed", "timed_out"):
            labels = {"phase": str(phase), "outcome": outcome}
            assert registry.get_sample_value("graceful_hooks_failed_total", labels) == 0
    # The control: a label nobody created has no sample.
    late = Gauge("late", "not created", ["x"], registry=registry)
    assert registry.get_sample_value("late", {"x": "y"}) is None
    late.labels("y")
    assert registry.get_sample_value("late", {"x": "y"}) == 0

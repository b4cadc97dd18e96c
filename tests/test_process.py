"""Real signals to a real service in a child process: exit codes, phase order, readiness."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support import APPS, ServiceProcess, free_port, http_status, wait_http

APP = APPS / "lifecycle_app.py"
PHASES = ["unready", "delay", "stop_accept", "drain", "cancel", "flush", "close"]


def start(**env: str) -> ServiceProcess:
    settings = {"GRACEFUL_STOP_TIMEOUT": "10"}
    settings.update(env)
    service = ServiceProcess.python(APP, env=settings)
    service.wait_for("APP serving")
    return service


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_runs_every_phase_in_order_and_exits_0(sig: signal.Signals) -> None:
    with start(APP_WORK_S="0.5") as service:
        service.signal(sig)
        assert service.wait() == 0
        finished = [e["phase"] for e in service.events() if e.get("event") == "phase.finished"]
        assert finished == PHASES
        report = service.wait_event("shutdown.report")
        assert report["exit_code"] == 0
        assert report["signals"] == [sig.name]
        assert report["inflight_at_signal"] == 1
        out = service.lines
        assert out.index("APP work-done") < out.index("APP flushed")
        assert out.index("APP close-hook") < out.index("APP resource-close")


def test_readyz_turns_503_while_draining() -> None:
    port = free_port()
    with start(APP_WORK_S="3", ADMIN_PORT=str(port)) as service:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", 200)
        assert http_status(f"{base}/livez") == 200
        service.signal(signal.SIGTERM)
        service.wait_event("shutdown.started")
        assert http_status(f"{base}/readyz") == 503
        assert http_status(f"{base}/livez") == 200
        metrics = _get(f"{base}/metrics")
        assert 'graceful_state{graceful_state="stopping"} 1.0' in metrics
        assert 'graceful_signals_received_total{signal="SIGTERM"} 1.0' in metrics
        assert service.wait() == 0


def test_second_signal_skips_drain_and_still_flushes() -> None:
    with start(APP_WORK_S="60", GRACEFUL_STOP_TIMEOUT="60", GRACEFUL_REPEAT_WINDOW="0") as service:
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        service.wait_event("shutdown.started")
        service.signal(signal.SIGTERM)
        assert service.wait() == 3  # work cut
        assert time.monotonic() - started < 30, "did not skip the drain"
        assert "APP flushed" in service.lines
        assert "shutdown.escalated" in service.event_names()


def test_third_signal_exits_at_once_with_a_last_log_line() -> None:
    settings = {"GRACEFUL_STOP_TIMEOUT": "120", "GRACEFUL_REPEAT_WINDOW": "0"}
    with start(APP_WORK_S="60", APP_FLUSH_S="60", **settings) as service:
        # Each signal only once the one before was handled: the kernel merges pending ones.
        service.signal(signal.SIGTERM)
        service.wait_event("shutdown.started")
        service.signal(signal.SIGTERM)
        service.wait_event("shutdown.escalated")
        service.signal(signal.SIGTERM)
        assert service.wait() == 5
        assert service.event_names()[-1] == "shutdown.forced"


def test_signal_storm_gives_one_shutdown() -> None:
    with start(APP_WORK_S="0.3") as service:
        for _ in range(100):
            service.signal(signal.SIGTERM)
        assert service.wait() == 0
        assert service.event_names().count("shutdown.started") == 1
        assert service.event_names().count("shutdown.report") == 1


def test_failed_flush_gives_exit_4_and_close_still_runs() -> None:
    with start(APP_FLUSH_RAISE="1") as service:
        service.signal(signal.SIGTERM)
        assert service.wait() == 4
        assert "APP resource-close" in service.lines
        report = service.wait_event("shutdown.report")
        assert report["failed_hooks"] == ["flush"]


def test_signal_during_startup_aborts_it_cleanly() -> None:
    service = ServiceProcess.python(APP, env={"APP_STARTUP_S": "60"})
    with service:
        service.wait_for("APP startup-begin")
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
        assert "startup.aborted" in service.event_names()
        assert "APP resource-open" not in service.lines


def test_bad_configuration_fails_at_startup_naming_the_variable() -> None:
    service = ServiceProcess.python(APP, env={"GRACEFUL_STOP_TIMEOUT": "ten"})
    with service:
        assert service.wait() == 1
        assert "GRACEFUL_STOP_TIMEOUT='ten'" in service.output()


def test_admin_port_taken_fails_at_startup_naming_it() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess.python(APP, env={"ADMIN_PORT": str(port)})
        with service:
            assert service.wait() == 1
            failed = service.wait_event("startup.failed")
            assert f"ADMIN_PORT={port}" in failed["error"]


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def test_log_format_off_leaves_the_format_alone_but_keeps_the_level() -> None:
    """With GRACEFUL_LOG_FORMAT=off and structlog left unconfigured, no DEBUG lines appear."""
    with start(GRACEFUL_LOG_FORMAT="off") as service:
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
        assert any("shutdown.report" in line for line in service.lines)
        assert not any("phase.started" in line for line in service.lines), service.output()

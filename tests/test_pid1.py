"""PID 1 without Docker: the service as PID 1 of a new PID namespace (``unshare``).

The kernel drops default-action signals sent to a namespace's PID 1 from outside it, exactly
as for a container's main process; orphans are re-parented to PID 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import APPS, ServiceProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to make a PID namespace",
)

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def namespace_pid1(unshare_pid: int, timeout: float = 10.0) -> int:
    """Host pid of the process that is PID 1 inside unshare's new namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare did not start its child")


def test_sigterm_stops_pid1_cleanly_and_orphans_are_reaped() -> None:
    argv = [*UNSHARE, sys.executable, "-u", str(APPS / "lifecycle_app.py")]
    with ServiceProcess(argv, env={"APP_ZOMBIES": "3"}) as service:
        pid1 = namespace_pid1(service.pid)
        try:
            service.wait_for("APP serving")
            starting = service.wait_event("service.starting")
            assert starting["pid1"] is True
            service.wait_count("zombie.reaped", 3, timeout=15)
            os.kill(pid1, signal.SIGTERM)
            assert service.wait() == 0
            report = service.wait_event("shutdown.report")
            assert report["zombies_reaped"] == 3
            assert report["exit_code"] == 0
        finally:
            # unshare does not take its child down with it: never leave PID 1 behind.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)


def test_without_a_handler_pid1_ignores_sigterm() -> None:
    """The control: plain Python as PID 1 never sees SIGTERM (so the test above can fail)."""
    code = "import time; print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([*UNSHARE, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        pid1 = namespace_pid1(proc.pid)
        os.kill(pid1, signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.0)
    finally:
        proc.kill()
        subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

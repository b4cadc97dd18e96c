"""A stop signal in the first moments of the ``graceful`` command is never dropped.

As a container's PID 1 a signal with no handler is dropped. The old console script
(``graceful.cli:main``) imported the whole command (asyncio, structlog, prometheus-client,
the package) before any handler existed: 0.2-0.3 s here during which ``docker stop``'s
SIGTERM was lost and the container ran until SIGKILL (found by the attack on issue 12).
Now ``StartupSignals.capture()`` (graceful.signals) catches SIGTERM and SIGINT first and
hands them on once the command's own handlers are in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import APPS, ServiceProcess
from tests.test_pid1 import UNSHARE, namespace_pid1

GRACEFUL = str(Path(sys.executable).parent / "graceful")
HEAVY = ("asyncio", "prometheus_client", "structlog", "typing")
HANG_GUARD = 30.0
CAPTURE = "from graceful.signals import StartupSignals; StartupSignals.capture()"

needs_pid_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to make a PID namespace",
)


def fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD, check=True
    )
    return done.stdout.strip()


def test_the_entry_point_installs_its_handlers_before_anything_heavy_is_imported() -> None:
    """The console script's module, imported into a fresh interpreter, loads none of the
    heavy modules, and its first step catches SIGTERM.

    Control: importing ``graceful.cli`` (the old entry point's first step) loads them all
    and leaves SIGTERM at its default: the window in which PID 1 dropped the signal."""
    script = Path(GRACEFUL).read_text()
    assert "from graceful.__main__ import main" in script
    probe = (
        "import sys, signal; {}; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), "
        "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    )
    assert fresh(probe.format(CAPTURE)) == "[] False"
    old = fresh(probe.format("import graceful.cli"))
    assert old == f"{list(HEAVY)!r} True"


@needs_pid_namespace
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sigterm_the_moment_pid1_catches_it_stops_the_service(workers: str) -> None:
    """``graceful serve`` as PID 1: SIGTERM is sent as soon as the process catches it
    (``SigCgt`` in /proc), which is now during the command's imports. The service stops
    (exit 0) instead of the signal being lost: without a handler it is dropped and the
    process serves on (``test_pid1.test_without_a_handler_pid1_ignores_sigterm``)."""
    argv = [*UNSHARE, GRACEFUL, "serve", "serve_starlette:app", "--workers", workers]
    env = {"PORT": "0", "ADMIN_PORT": ""}
    with ServiceProcess(argv, cwd=APPS, env=env) as service:
        pid1 = namespace_pid1(service.pid)
        deadline = time.monotonic() + HANG_GUARD
        while not caught(pid1, signal.SIGTERM):
            assert time.monotonic() < deadline, "SIGTERM was never caught"
        os.kill(pid1, signal.SIGTERM)
        assert service.wait(HANG_GUARD) == 0, service.output()


def caught(pid: int, sig: signal.Signals) -> bool:
    """``sig`` has a handler in process ``pid`` (its bit in ``SigCgt``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False

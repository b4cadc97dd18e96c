"""What an attack on the startup signals found (issue 18's review), each with its control.

1. An import that swallows ``LoadingStopped`` (a bare ``except:`` around a slow optional
   import, a ``__del__`` that runs then) lost the SIGTERM: the service served until SIGKILL.
   Now the signal is recorded before the exception, and the runtime stops at once.
2. An import that started a thread that is not a daemon, then failed or was stopped, never
   exited: the interpreter joined the thread forever (a container "running" forever,
   ``docker stop`` ending in SIGKILL). Now the command exits with its code at once and names
   the threads (``process.threads_abandoned``), and so does a worker of ``--workers``.
3. A storm of SIGTERMs during the import ended the process by the signal (-15) instead of
   exit 0: the default handler was back before the interpreter had exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

GRACEFUL = str(Path(sys.executable).parent / "graceful")
HANG_GUARD = 30.0

SERVES = """
import asyncio

async def main(runtime):
    runtime.mark_ready()
    print("serving", flush=True)
    while not runtime.stopping:
        await asyncio.sleep(0.02)
"""


def app(tmp_path: Path, name: str, body: str) -> Path:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return tmp_path


def start(tmp_path: Path, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GRACEFUL_STOP_TIMEOUT": "3"}
    return subprocess.Popen(
        [GRACEFUL, *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], text: str) -> list[str]:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never printed {text!r}: {seen}")


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"still running {HANG_GUARD} s after the signal: {out}") from None
    return process.returncode, out


SWALLOWS = """
import time
print("importing", flush=True)
try:
    time.sleep(20)  # stands for a slow optional import
except:  # noqa: E722 - the old optional-import pattern: it catches everything
    pass
"""


def test_a_sigterm_the_import_swallows_still_stops_the_service(tmp_path: Path) -> None:
    """The import catches ``LoadingStopped`` and goes on; the signal is not lost: the runtime
    stops as soon as it starts (exit 0, a report). Control: the same app, never signalled,
    serves on."""
    app(tmp_path, "swallows", SWALLOWS.replace("time.sleep(20)", "time.sleep(1)") + SERVES)
    control = start(tmp_path, "run", "swallows:main")
    try:
        wait_for_line(control, "serving")
        time.sleep(0.5)
        assert control.poll() is None
    finally:
        control.kill()
        control.communicate()

    app(tmp_path, "swallows", SWALLOWS + SERVES)
    process = start(tmp_path, "run", "swallows:main")
    wait_for_line(process, "importing")
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 0, out
    assert '"shutdown.report"' in out
    assert '"signal SIGTERM"' in out or "SIGTERM" in out


THREAD = """
import threading, time
threading.Thread(target=lambda: time.sleep(3600), name="app-pool").start()  # not a daemon
"""


def test_a_stopped_import_that_started_a_thread_still_exits(tmp_path: Path) -> None:
    """SIGTERM during an import that started a thread: exit 0 at once, the thread named.
    Control: a plain interpreter with the same module hangs at its exit (killed here)."""
    app(tmp_path, "threaded", THREAD + 'print("importing", flush=True)\ntime.sleep(20)\n' + SERVES)
    control = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time; threading.Thread(target=lambda: time.sleep(3600)).start()",
        ],
    )
    with pytest.raises(subprocess.TimeoutExpired):
        control.wait(1.0)
    control.kill()
    control.wait()

    process = start(tmp_path, "run", "threaded:main")
    wait_for_line(process, "importing")
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 0, out
    assert '"run.stopped_while_loading"' in out
    assert '"process.threads_abandoned"' in out
    assert "app-pool" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "failing:main"],
        ["serve", "failing:app", "--port", "0"],
        ["serve", "failing:app", "--port", "0", "--workers", "2"],
        ["serve", "failing:app", "--port", "0", "--workers", "2", "--worker-start", "spawn"],
    ],
    ids=["run", "serve", "workers-fork", "workers-spawn"],
)
def test_a_failed_import_that_started_a_thread_exits_with_1(
    tmp_path: Path, argv: list[str]
) -> None:
    """The app's import starts a thread, then raises: one line saying why, exit 1, at once,
    from one process or from workers."""
    app(tmp_path, "failing", THREAD + 'raise RuntimeError("bad config")\n')
    process = start(tmp_path, *argv)
    code, out = finish(process)
    assert code == 1, out
    assert "bad config" in out
    assert '"process.threads_abandoned"' in out


def test_a_storm_of_sigterms_during_the_import_still_exits_0(tmp_path: Path) -> None:
    """Three SIGTERMs 1 ms apart during the import, five times: exit 0 each time, never
    death by the signal (-15)."""
    app(tmp_path, "slow", 'import time\nprint("importing", flush=True)\ntime.sleep(20)\n' + SERVES)
    for _ in range(5):
        process = start(tmp_path, "run", "slow:main")
        wait_for_line(process, "importing")
        for _ in range(3):
            process.send_signal(signal.SIGTERM)
            time.sleep(0.001)
        code, out = finish(process)
        assert code == 0, out


EXECUTOR = """
import concurrent.futures
POOL = concurrent.futures.ThreadPoolExecutor(2)  # module level, used, never shut down
POOL.submit(print, "job done", flush=True).result()
"""


def test_an_apps_idle_executor_does_not_hold_the_stop(tmp_path: Path) -> None:
    """An app with a module-level ``ThreadPoolExecutor`` it used once: its idle workers end
    only at the interpreter's exit, so joining them before it made every stop wait for the
    deadline and exit 6 (found by attack). Now exit 0 at once. The control, a thread of the
    app's own that never ends, is still abandoned at the deadline with exit 6
    (tests/test_runtime.py covers it: ``shutdown.threads_abandoned``)."""
    app(tmp_path, "pooled", EXECUTOR + SERVES)
    process = start(tmp_path, "run", "pooled:main")
    wait_for_line(process, "serving")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 0, out
    assert time.monotonic() - began < 2.5  # the deadline (3 s budget) was never reached
    assert "threads_abandoned" not in out

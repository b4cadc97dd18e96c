"""``graceful harness run`` interrupted at many points leaves nothing, and says only what it did.

Each run gets its own run id (``GRACEFUL_HARNESS_RUN_ID``), so what it left can be found by
label *and* by name: a volume that Docker made again without labels (the create of a
cancelled thread, still on its way after the clean-up) has only its name. The faults (issue
18, #7 and #8): interrupted while a container started, the harness printed "containers
removed" and exited 130 with the container still running (published ports) and an unlabelled
volume that ``graceful harness clean`` could not find; and a SIGTERM during its final
clean-up turned a PASS into exit 1 with a ``CancelledError`` traceback.

Real harness processes, real signals, the example image on the real engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graceful.harness.cleanup import leftovers, sweep
from graceful.harness.pytest_plugin import in_ci

if TYPE_CHECKING:
    from graceful.harness.engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "graceful-example-asgi"
ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD = 120.0


@pytest.fixture(scope="module")
def example(graceful_engine: Engine) -> str:
    import docker.errors

    try:
        graceful_engine.client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        if in_ci():
            raise
        pytest.skip(f"{IMAGE} is not built: run `make images`")
    return IMAGE


class HarnessRun:
    """``graceful harness run`` on the example, in a session of its own, its output read as
    it comes."""

    def __init__(self, image: str) -> None:
        self.run_id = "t-" + uuid.uuid4().hex[:10]
        env = {**os.environ, "GRACEFUL_HARNESS_RUN_ID": self.run_id, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graceful.harness", "run", "--image", image,
             "--scenario", "stop-idle", "--stop-timeout", "5"],
            cwd=ROOT, env=env, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._seen = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._seen:
                lines.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str, lines: list[str]) -> None:
        deadline = time.monotonic() + HANG_GUARD
        with self._seen:
            while not any(text in line for line in lines):
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, self.output()
                self._seen.wait(0.1)

    def finish(self) -> int:
        code = self.proc.wait(HANG_GUARD)
        for reader in self._readers:
            reader.join(10)
        return code

    def close(self) -> None:
        """Kill the harness if it still runs; close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        return "".join(self.out) + "\n--- stderr ---\n" + "".join(self.err)


def left_of(engine: Engine, run_id: str) -> tuple[str, ...]:
    """Containers, volumes and networks of the run still there, by label and by name."""
    return leftovers(engine.client, run_id)


@pytest.mark.parametrize(
    ("sig", "delay"),
    [
        (signal.SIGTERM, 0.0),
        (signal.SIGTERM, 0.005),
        (signal.SIGTERM, 0.01),
        (signal.SIGTERM, 0.02),
        (signal.SIGTERM, 0.1),
        (signal.SIGTERM, 0.4),
        (signal.SIGTERM, 1.5),
        (signal.SIGINT, 0.0),
        (signal.SIGINT, 0.01),
        (signal.SIGINT, 0.05),
        (signal.SIGINT, 0.3),
        (signal.SIGINT, 1.0),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else f"{v}s",
)
def test_interrupted_while_starting_leaves_nothing_and_says_so(
    graceful_engine: Engine, example: str, sig: signal.Signals, delay: float
) -> None:
    """The signal comes ``delay`` after the harness says it is starting the first container
    (Ctrl-C as a terminal sends it: to the process group)."""
    run = HarnessRun(example)
    try:
        run.wait_for("starting", run.err)
        time.sleep(delay)
        os.killpg(run.proc.pid, sig)
        code = run.finish()
        err = "".join(run.err)
        assert left_of(graceful_engine, run.run_id) == (), run.output()
        assert code == 130, run.output()
        assert "Traceback" not in err, run.output()
        assert "interrupted" in err
        assert "containers removed" not in err  # the old claim, made before anything was
        assert f"nothing of run {run.run_id} is left" in err, run.output()
    finally:
        run.close()
        sweep(graceful_engine.client, run_id=run.run_id)  # never leave ours, pass or fail


def test_control_a_killed_harness_leaves_what_the_check_finds(
    graceful_engine: Engine, example: str
) -> None:
    """The control: a harness SIGKILLed once its container runs cannot clean up, and the
    check by label and name finds the container and its volume."""
    run = HarnessRun(example)
    try:
        run.wait_for("waiting until ready", run.err)
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.finish()
        left = left_of(graceful_engine, run.run_id)
        assert any(item.startswith("container ") for item in left), left
        assert any(item.startswith("volume ") for item in left), left
    finally:
        run.close()
        sweep(graceful_engine.client, run_id=run.run_id)
    assert left_of(graceful_engine, run.run_id) == ()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_the_final_clean_up_keeps_the_verdict(
    graceful_engine: Engine, example: str, sig: signal.Signals
) -> None:
    """The signal is sent once the report is written (the scenarios are over), again every
    10 ms until the harness says it came during its clean-up ("one moment": the control
    that it did). The clean-up finishes, nothing is left, and the exit code is the verdict's
    (was: exit 1 and a CancelledError traceback)."""
    run = HarnessRun(example)
    try:
        run.wait_for("stop-idle", run.out)  # the report's table
        deadline = time.monotonic() + HANG_GUARD
        while not any("one moment" in line for line in run.err):
            assert run.proc.poll() is None, run.output()
            assert time.monotonic() < deadline, run.output()
            os.kill(run.proc.pid, sig)
            time.sleep(0.01)
        code = run.finish()
        err = "".join(run.err)
        assert "PASS" in "".join(run.out), run.output()
        assert "Traceback" not in err, run.output()
        assert code == 0, run.output()
        assert left_of(graceful_engine, run.run_id) == (), run.output()
    finally:
        run.close()
        sweep(graceful_engine.client, run_id=run.run_id)


def test_a_run_id_is_checked(example: str) -> None:
    env = {**os.environ, "GRACEFUL_HARNESS_RUN_ID": "Not/A Name"}
    out = subprocess.run(
        [sys.executable, "-m", "graceful.harness", "run", "--image", example,
         "--scenario", "stop-idle"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "GRACEFUL_HARNESS_RUN_ID='Not/A Name'" in out.stderr
    assert "Traceback" not in out.stderr

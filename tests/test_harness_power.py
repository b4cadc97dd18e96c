"""The ``power-loss`` scenario on a real engine and a real FUSE volume (issue 13, items 2 and 3).

Two control images prove the check can fail where ``kill-under-load`` cannot: one commits with
SQLite's ``synchronous=NORMAL`` in WAL mode, one acknowledges after ``write()`` without
``fsync``. Both pass ``kill-under-load`` (the page cache survives SIGKILL) and fail
``power-loss`` with the finding that says why. The project's examples pass it (they pass
``kill-under-load`` in tests/test_harness_docker.py). Without FUSE the scenario is SKIPPED with
the reason, and whatever ends a run (a FAIL, Ctrl-C) leaves no mount and no container.

Synchronous tests, like tests/test_harness_docker.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from graceful.harness.pytest_plugin import in_ci
from tests.harness_servers import images_or_skip

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.engine import Engine
    from graceful.harness.report import Report

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STOP_TIMEOUT = 3
HANG_GUARD = 300


def power_mounts() -> list[str]:
    """Mount points of power-loss volumes on this machine (any run's)."""
    from graceful.harness.scenarios.power import POWER_PREFIX

    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if f"/{POWER_PREFIX}" in line.split()[4]]


def require_fuse() -> None:
    from graceful.harness.powerloss import unavailable

    reason = unavailable()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and the power-loss volume cannot be mounted: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_images(graceful_engine: Engine) -> dict[str, ImageInfo]:
    return images_or_skip(graceful_engine)


@pytest.fixture(autouse=True)
def nothing_left_behind(graceful_engine: Engine) -> Iterator[None]:
    """Every container and volume the scenarios started, and every mount, is gone after."""
    before = power_mounts()
    yield
    selector = {"label": f"graceful.harness={graceful_engine.run_id}"}
    client = graceful_engine.client
    assert client.containers.list(all=True, filters=selector) == []
    assert client.volumes.list(filters=selector) == []
    assert power_mounts() == before


def run(engine: Engine, image: ImageInfo, *names: str) -> Report:
    from graceful.harness.context import Settings
    from graceful.harness.scenarios import make_scenarios, run_scenarios

    settings = Settings(stop_timeout=STOP_TIMEOUT)
    return asyncio.run(run_scenarios(engine, image, make_scenarios(names), settings))


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("wal-normal", "state.sqlite-wal"),
        ("no-fsync", "state.sqlite.items"),
    ],
)
def test_controls_pass_kill_under_load_and_fail_power_loss(
    graceful_engine: Engine, test_images: dict[str, ImageInfo], image: str, why: str
) -> None:
    """A store that is not durable at acknowledgement keeps every write across SIGKILL (the
    page cache holds them), so ``kill-under-load`` passes: the control that the loss is the
    power cut's. ``power-loss`` then loses them, and says so in plain words."""
    require_fuse()
    report = run(graceful_engine, test_images[image], "kill-under-load", "power-loss")
    kill, power = report.scenarios
    assert kill.verdict == "PASS", report.table(width=200)
    assert kill.lost == 0
    assert power.verdict == "FAIL", report.table(width=200)
    assert power.exit_code == 137
    assert power.lost > 0
    finding = power.problems[0]
    assert finding.startswith(f"acknowledged writes lost after a power cut ({power.lost} of ")
    assert "the service acknowledged before fsync" in finding
    assert why in finding


def example_or_skip(engine: Engine, image: str) -> ImageInfo:
    """An example image (built by docker/build.sh), or skip (a failure when CI=true)."""
    import docker.errors

    try:
        return engine.image(image)
    except Exception as exc:
        if not isinstance(exc.__cause__, docker.errors.ImageNotFound) or in_ci():
            raise
        pytest.skip(f"{image} is not built: run `make images`")


@pytest.mark.parametrize("image", ["graceful-example-asgi", "graceful-example-aiohttp"])
def test_the_examples_keep_every_write_across_a_power_cut(
    graceful_engine: Engine, image: str
) -> None:
    """graceful's DurableStore, in the example images, run as uid 10001 on the volume: every
    acknowledged write survives the cut and the store opens cleanly afterwards."""
    require_fuse()
    info = example_or_skip(graceful_engine, image)
    report = run(graceful_engine, info, "power-loss")
    (result,) = report.scenarios
    assert result.verdict == "PASS", report.table(width=200)
    assert result.exit_code == 137
    assert result.acked >= 30
    assert result.lost == 0
    notes = "\n".join(result.findings)
    assert "acknowledged writes were there after a power cut, and the store opened" in notes
    # SQLite never syncs its -shm index, so a cut always reverts it (and the store rebuilds it).
    assert "the cut dropped what was not synced: reverted " in notes
    assert "state.sqlite-shm" in notes


def harness(*args: str, pre: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*pre, sys.executable, "-m", "graceful.harness", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_without_fuse_the_scenario_is_skipped_with_the_reason(
    test_images: dict[str, ImageInfo],
) -> None:
    """A host without /dev/fuse (here: the harness in a mount namespace whose /dev is an
    empty tmpfs): SKIPPED with the reason, exit 0 (1 with --strict).

    Control: with /dev/fuse the same image FAILs the scenario
    (test_controls_pass_kill_under_load_and_fail_power_loss), so the SKIPPED is the missing
    FUSE's doing."""
    require_fuse()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to hide /dev/fuse")
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none /dev && exec "$@"', "sh")  # fmt: skip
    args = ["run", "--image", test_images["no-fsync"].ref, "--scenario", "power-loss",
            "--stop-timeout", str(STOP_TIMEOUT)]  # fmt: skip
    proc = harness(*args, "--strict", pre=hide)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 1, out + err
    assert "SKIPPED" in out
    assert "skipped: needs a power-loss volume (FUSE, mounted as root on the host): " in out
    assert "/dev/fuse cannot be opened" in out


def test_ctrl_c_during_the_scenario_leaves_no_mount_and_no_container(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Ctrl-C (SIGINT to the harness's process group) while the service runs on the mounted
    volume: the harness exits 130, its FUSE mount is gone and so is every container it
    started (found by the owner label, which carries the harness's pid)."""
    require_fuse()
    proc = harness(
        "run", "--image", test_images["good"].ref, "--scenario", "power-loss",
        "--stop-timeout", str(STOP_TIMEOUT),
    )  # fmt: skip
    _, err = interrupt_when(proc, "writers running")
    assert "interrupted" in err
    assert left_by(graceful_engine, proc.pid) == []


def interrupt_when(proc: subprocess.Popen[str], marker: str) -> tuple[str, str]:
    """Wait for a line of the harness's stderr that contains ``marker`` (with one power-loss
    volume more mounted than before), then Ctrl-C it: it must exit 130 and leave no mount."""
    before = power_mounts()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                break
        else:
            pytest.fail(f"the harness never said {marker!r}: {proc.communicate()}")
        assert len(power_mounts()) == len(before) + 1
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert power_mounts() == before
    return out, err


def left_by(engine: Engine, pid: int) -> list[str]:
    """Containers whose owner label names the harness process ``pid``."""
    owner = "graceful.harness.owner"
    found = engine.client.containers.list(all=True, filters={"label": owner})
    return [c.name for c in found if f"/{pid}/" in c.labels.get(owner, "")]

"""The harness against real containers: each deliberately broken image in tests/images/
fails the scenario it should, with the finding that names its mistake, and the well-behaved
one passes every scenario.

Real ``docker stop`` / ``docker kill``, real exit codes, logs and volumes, through the
graceful pytest plugin's engine fixture (skipped without an engine, a failure when CI=true).
The tests are synchronous on purpose: async tests run once per event loop here, and a
container scenario gains nothing from running twice.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graceful.harness.pytest_plugin import in_ci
from tests.harness_servers import harness_run, images_or_skip

if TYPE_CHECKING:
    from graceful.harness.container import Container, ImageInfo
    from graceful.harness.engine import Engine
    from graceful.harness.report import Report, ScenarioResult

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STOP_TIMEOUT = 3  # short, so a SIGKILL verdict costs 3 s, yet room for a real drain


@pytest.fixture(scope="session")
def test_images(graceful_engine: Engine) -> dict[str, ImageInfo]:
    """Every image under tests/images/, built (from cache after the first time)."""
    return images_or_skip(graceful_engine)


def run(engine: Engine, image: ImageInfo, *names: str) -> Report:
    from graceful.harness.context import Settings
    from graceful.harness.scenarios import make_scenarios, run_scenarios

    settings = Settings(stop_timeout=STOP_TIMEOUT, startup_timeout=60)
    return asyncio.run(run_scenarios(engine, image, make_scenarios(names), settings))


def only(report: Report) -> ScenarioResult:
    assert len(report.scenarios) == 1
    return report.scenarios[0]


def problems(result: ScenarioResult) -> str:
    return "\n".join(result.problems)


def test_the_good_image_passes_every_scenario(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    from graceful.harness.scenarios import SCENARIOS

    report = run(graceful_engine, test_images["good"], *SCENARIOS)
    assert report.passed, report.table(width=200)
    by_name = {r.name: r for r in report.scenarios}
    assert by_name["stop-idle"].exit_code == 0
    assert by_name["stop-over-budget"].exit_code == 3  # work was cut, and it says so
    assert by_name["kill-under-load"].exit_code == 137
    assert by_name["kill-under-load"].acked > 0
    assert by_name["kill-under-load"].lost == 0
    under_load = by_name["stop-under-load"]
    assert under_load.failed == 0
    assert under_load.sent > 0
    notes = "\n".join(under_load.findings)
    assert "/readyz went 503" in notes
    assert "were refused" in notes  # seen from inside the network namespace
    for r in report.scenarios:
        assert r.stop_seconds is not None
        assert r.stop_seconds < STOP_TIMEOUT, r


def test_no_handler_as_pid1_is_killed_after_the_full_timeout(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    result = only(run(graceful_engine, test_images["no-handler"], "stop-idle"))
    assert not result.passed
    assert result.exit_code == 137
    assert result.stop_seconds is not None
    assert result.stop_seconds >= STOP_TIMEOUT - 0.5
    assert "exited 137 after the full 3 s timeout" in result.problems[0]
    assert "PID 1 (python3 /app/app.py) installs no SIGTERM handler" in result.problems[0]


def test_shell_form_cmd_is_named(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    result = only(run(graceful_engine, test_images["shell-form"], "stop-idle"))
    assert not result.passed
    assert result.exit_code == 137
    assert "CMD is in shell form" in result.problems[0]
    assert "/bin/sh is PID 1" in result.problems[0]


def test_exiting_at_once_cuts_in_flight_requests(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    result = only(run(graceful_engine, test_images["exit-at-once"], "stop-under-load"))
    assert not result.passed
    assert result.exit_code == 0  # a clean exit code hides the damage; the clients saw it
    text = problems(result)
    assert "in-flight requests were cut" in text
    assert "readiness never went 503" in text
    assert result.failed > 0


def test_early_acknowledgement_loses_writes_on_kill(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    result = only(run(graceful_engine, test_images["early-ack"], "kill-under-load"))
    assert not result.passed
    assert result.exit_code == 137
    assert result.lost > 0
    assert result.acked >= result.lost
    assert "acknowledged writes lost" in problems(result)


def test_unbounded_drain_passes_short_work_but_is_killed_over_budget(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    report = run(
        graceful_engine, test_images["endless-drain"], "stop-under-load", "stop-over-budget"
    )
    under, over = report.scenarios
    assert under.passed, under.findings  # work that fits the budget drains fine
    assert not over.passed
    assert over.exit_code == 137
    assert "handles SIGTERM but did not exit in time" in over.problems[0]
    assert over.lost == 0  # the writes were durable; only the exit was wrong


def test_unhandled_stopsignal_is_reported(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    result = only(run(graceful_engine, test_images["wrong-stopsignal"], "signals"))
    assert not result.passed
    assert result.exit_code == 137
    text = problems(result)
    assert "SIGQUIT (STOPSIGNAL)" in text
    assert "installs no SIGQUIT handler" in text
    assert "SIGINT" not in text  # SIGINT itself is handled fine


def test_clean_up_removes_anonymous_volumes(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """An image with ``VOLUME /data`` gives every container mounted without a named volume
    there an anonymous one (the prober's sidecar is such a container). A scenario's clean-up
    removes it with the container.

    Control: removing the container without its volumes (what one of the three removal paths
    did before there was one) leaves the volume behind.
    """
    import docker.errors

    from graceful.harness.context import Context, Settings

    client = graceful_engine.client
    ref = test_images["good"].ref

    def anonymous_volume(container: Container) -> str:
        container.reload()
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/data"]
        assert mount["Type"] == "volume"
        return str(mount["Name"])

    leaky = graceful_engine.run(ref, entrypoint=["sleep", "60"], healthcheck=False)
    left = anonymous_volume(leaky)
    client.api.remove_container(leaky.id, force=True)
    try:
        assert client.volumes.get(left) is not None
    finally:
        client.api.remove_volume(left, force=True)

    ctx = Context(graceful_engine, test_images["good"], Settings(), scenario="clean-up")
    sidecar = graceful_engine.run(ref, entrypoint=["sleep", "60"], healthcheck=False)
    ctx.track(sidecar)
    volume = anonymous_volume(sidecar)
    ctx.remove_now()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(sidecar.id)
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)


def test_cli_exit_status_and_json_report(
    graceful_engine: Engine, test_images: dict[str, ImageInfo], tmp_path: Path
) -> None:
    import json

    out = tmp_path / "report.json"
    good = harness_run(
        "--image", test_images["good"].ref, "--scenario", "stop-idle,signal-storm",
        "--stop-timeout", str(STOP_TIMEOUT), "--json", str(out),
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert "stop-idle" in good.stdout
    assert "PASS" in good.stdout
    assert "all 2 scenarios passed" in good.stdout
    data = json.loads(out.read_text())
    assert data["image"] == test_images["good"].ref
    assert [s["name"] for s in data["scenarios"]] == ["stop-idle", "signal-storm"]
    assert [s["verdict"] for s in data["scenarios"]] == ["PASS", "PASS"]
    assert data["summary"]["PASS"] == 2

    bad = harness_run(
        "--image", test_images["exit-at-once"].ref, "--scenario", "signals",
        "--stop-timeout", str(STOP_TIMEOUT),
    )  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout


PLUGIN_EXAMPLE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.asyncio
    @pytest.mark.graceful_chaos
    async def test_stops_cleanly(graceful_harness):
        result = await graceful_harness.run("stop-idle")
        assert result.passed, result.findings
        assert result.exit_code == 0

    @pytest.mark.asyncio
    async def test_acked_writes_survive_sigkill(graceful_harness):
        service = await graceful_harness.start()
        async with graceful_harness.load(service) as client:
            acked = [await client.write() for _ in range(5)]
        await graceful_harness.kill(service)
        stored = await graceful_harness.stored_ids(service.volume)
        assert {r.item_id for r in acked if r.acked} <= stored
    """
)


def test_pytest_plugin_runs_users_chaos_tests(
    graceful_engine: Engine, test_images: dict[str, ImageInfo], tmp_path: Path
) -> None:
    (tmp_path / "test_chaos.py").write_text(PLUGIN_EXAMPLE)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--graceful-image",
            test_images["good"].ref,
            "--graceful-stop-timeout",
            str(STOP_TIMEOUT),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


@pytest.mark.parametrize("image", ["graceful-example-asgi", "graceful-example-aiohttp"])
def test_the_example_services_pass_every_scenario(graceful_engine: Engine, image: str) -> None:
    """The project's own examples (built by docker/build.sh) keep the whole contract."""
    import docker.errors

    from graceful.harness.scenarios import SCENARIOS

    try:
        info = graceful_engine.image(image)
    except Exception as exc:
        if not isinstance(exc.__cause__, docker.errors.ImageNotFound) or in_ci():
            raise
        pytest.skip(f"{image} is not built: run `make images`")
    report = run(graceful_engine, info, *SCENARIOS)
    assert report.passed, report.table(width=200)

"""The rolling-restart scenario: replicas replaced one at a time behind HAProxy, under load.

1. Without an engine: the load balancer's configuration ships with the package and is the only
   copy (``docker/lb.Dockerfile`` copies it into the image); the scenario reads its detection
   time from it; it is opt-in (not in the default set); the load balancer's log lines are
   parsed.
2. On Docker (real HAProxy, real ``docker stop``, real replicas of the example services):
   three full rolls of each example service lose no request and every replica exits 0; the
   control roll with ``GRACEFUL_DELAY=0`` reports the requests it lost as a note; with the
   delay at 0 the verdict is FAIL (the check can fail); ``graceful harness run --scenario
   rolling-restart`` works from the command line.

The Docker tests are synchronous on purpose (as in test_harness_docker.py): async tests run
once per event loop here, and a container scenario gains nothing from running twice.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graceful.harness.cluster import (
    LB_CONFIG_PATH,
    LB_IMAGE,
    lb_config,
    lb_detection,
    parse_httplog,
)
from graceful.harness.pytest_plugin import in_ci
from graceful.harness.rolling import RollingRestart
from graceful.harness.scenarios import make_scenarios, scenario_names

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.engine import Engine
    from graceful.harness.report import ScenarioResult

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["graceful-example-asgi", "graceful-example-aiohttp"]


# -- 1. without an engine ---------------------------------------------------------------------


def test_the_packaged_config_is_the_one_source() -> None:
    """Users who pip-installed graceful get the file tests/test_haproxy_config.py checks, the
    image build copies that same file, and the tree holds no second copy to drift apart."""
    packaged = ROOT / "graceful" / "harness" / "haproxy.cfg"
    assert lb_config() == packaged.read_text()
    dockerfile = (ROOT / "docker" / "lb.Dockerfile").read_text()
    assert f"COPY graceful/harness/haproxy.cfg {LB_CONFIG_PATH}\n" in dockerfile
    tops = ("graceful", "docker", "docs", "examples", "tests", "bench")
    copies = [p for top in tops if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*.cfg")]
    assert copies == [packaged]


def test_detection_time_comes_from_the_config() -> None:
    detection = lb_detection(lb_config())
    assert (detection.inter_s, detection.fall, detection.check_timeout_s) == (0.5, 1, 1.0)
    assert detection.seconds == 1.5
    # The default delay must outlast it, or the judged rolls would lose requests.
    assert RollingRestart().delay > detection.seconds

    slower = lb_config().replace("inter 500ms", "inter 2s").replace("fall 1 ", "fall 3 ")
    assert lb_detection(slower).seconds == 7.0
    with pytest.raises(ValueError, match="timeout"):
        lb_detection(lb_config().replace("timeout check 1s", ""))


def test_rolling_restart_is_opt_in() -> None:
    assert "rolling-restart" not in scenario_names()
    assert "rolling-restart" in scenario_names(opt_in=True)
    (scenario,) = make_scenarios(["rolling-restart"])
    assert isinstance(scenario, RollingRestart)
    assert (scenario.replicas, scenario.rolls, scenario.delay, scenario.control) == (
        3,
        1,
        2.0,
        True,
    )
    with pytest.raises(ValueError, match="at least 1"):
        RollingRestart(rolls=0)


def test_load_balancer_log_lines_are_read() -> None:
    # Real lines from graceful-lb:bookworm: a refused connection, an answer, a stats read.
    log = (
        "172.28.0.1:54488 [27/Nov/2026:18:42:07.193] app replicas/replica3 0/0/-1/-1/1 503 217 "
        '- - SC-- 9/8/5/1/0 0/0 "GET /work?ms=20 HTTP/1.1"\n'
        "172.28.0.1:54448 [27/Nov/2026:18:42:04.274] app replicas/replica1 0/0/1/23/24 200 174 "
        '- - ---- 9/8/7/2/0 0/0 "GET /work?ms=20 HTTP/1.1"\n'
        "172.28.0.1:55756 [27/Nov/2026:18:42:00.270] observe observe/<STATS> 0/0/0/0/0 200 3279 "
        '- - LR-- 1/1/0/0/0 0/0 "GET /stats;csv HTTP/1.1"\n'
        "[WARNING]  (8) : Server replicas/replica1 is UP/READY (resolves again).\n"
    )
    assert [(status, state) for _, status, state in parse_httplog(log)] == [
        ("503", "SC--"),
        ("200", "----"),
    ]
    first = next(parse_httplog(log))[0]
    assert first == pytest.approx(1795804927.193)


# -- 2. on Docker -----------------------------------------------------------------------------


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def lb_image(graceful_engine: Engine) -> str:
    """The HAProxy image is there (built by docker/build.sh); skipped locally, fails in CI."""
    import docker.errors

    try:
        graceful_engine.client.images.get(LB_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"{LB_IMAGE} is not built: run `bash docker/build.sh`")
    return LB_IMAGE


@pytest.mark.docker
def test_the_lb_image_carries_the_packaged_config(graceful_engine: Engine, lb_image: str) -> None:
    """docker/lb.Dockerfile copies the one source in as the image's default config."""
    container = graceful_engine.client.containers.create(lb_image, labels=graceful_engine.labels)
    try:  # never started: the file is read from the image's layers
        chunks, _ = container.get_archive(LB_CONFIG_PATH)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.extractfile("haproxy.cfg")
            assert member is not None
            text = member.read().decode()
    finally:
        container.remove(force=True)
    assert text == lb_config()


def image(engine: Engine, ref: str) -> ImageInfo:
    import docker.errors

    try:
        return engine.image(ref)
    except Exception as exc:
        if not isinstance(exc.__cause__, docker.errors.ImageNotFound):
            raise
        _missing(f"{ref} is not built: run `bash docker/build.sh`")
        raise


def roll(engine: Engine, ref: str, scenario: RollingRestart) -> ScenarioResult:
    from graceful.harness.context import Settings
    from graceful.harness.scenarios import run_scenarios

    report = asyncio.run(run_scenarios(engine, image(engine, ref), [scenario], Settings()))
    (result,) = report.scenarios
    print(report.table(width=250))  # shown by pytest -rA / on failure: the measured numbers
    return result


def control_losses(findings: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """(failed, sent) from the control roll's note."""
    (note,) = [
        f for f in findings if f.startswith("note: with GRACEFUL_DELAY=0") and "request" in f
    ]
    match = re.search(r"GRACEFUL_DELAY=0: (\d+) of (\d+) requests failed", note)
    assert match is not None, note
    return int(match.group(1)), int(match.group(2))


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("ref", EXAMPLES)
def test_three_rolls_lose_no_request(graceful_engine: Engine, lb_image: str, ref: str) -> None:
    """1. Two replicas behind HAProxy, steady load through it (two keep the test short; the
       CLI test below rolls the default three).
    2. Three full rolls: new replica in and UP, old one stopped and gone, six times.

    Result: no request failed, every old replica exited 0, and each was out of rotation
    before it exited (its /readyz went 503 and the delay outlasted the LB's detection).
    """
    scenario = RollingRestart(replicas=2, rolls=3, control=False, lb_image=lb_image)
    result = roll(graceful_engine, ref, scenario)
    assert result.passed, result.findings
    assert result.failed == 0
    assert result.sent > 500  # the load really ran through the whole roll
    assert result.exit_code == 0
    text = "\n".join(result.findings)
    assert "3 rolls (6 replacements of 2 replicas, GRACEFUL_DELAY=2 s)" in text
    assert "all 6 stopped replicas: exited 0" in text
    assert "taken 6 of 6 out of rotation before they exited" in text


@pytest.mark.docker
@pytest.mark.slow
def test_without_the_delay_the_verdict_fails(graceful_engine: Engine, lb_image: str) -> None:
    """With GRACEFUL_DELAY=0 a replica closes its listener while HAProxy still routes to it,
    and HAProxy (retrying nothing) hands the refusals to the client: the check can fail.

    Result: FAIL, with the lost requests counted and the LB's termination state named.
    """
    scenario = RollingRestart(replicas=2, delay=0, control=False, lb_image=lb_image)
    result = roll(graceful_engine, EXAMPLES[0], scenario)
    assert not result.passed
    assert result.failed > 0
    assert result.ok + result.failed == result.sent
    # Other problems may come with it (a traceback a replica logged); this one must be there.
    (problem,) = [p for p in result.problems if "through the load balancer failed" in p]
    assert f"{result.failed} of {result.sent} requests through the load balancer failed" in problem
    assert "SC--" in problem  # refused by the replica, as the load balancer logged it
    assert "does not outlast the load balancer's detection time" in problem
    assert result.exit_code == 0  # the stops themselves were clean: only the clients saw it


@pytest.mark.docker
@pytest.mark.slow
def test_the_cli_runs_it_with_the_control_roll(
    graceful_engine: Engine, lb_image: str, tmp_path: Path
) -> None:
    """``graceful harness run --scenario rolling-restart`` with its defaults: one control roll
    with GRACEFUL_DELAY=0, then one judged roll with 2 s.

    Result: exit 0 (PASS), and the control roll's lost requests reported as a note.
    """
    image(graceful_engine, EXAMPLES[0])
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "graceful.harness",
            "run",
            "--image",
            EXAMPLES[0],
            "--scenario",
            "rolling-restart",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert scenario["name"] == "rolling-restart"
    assert scenario["passed"] is True
    assert scenario["requests"]["failed"] == 0
    failed, sent = control_losses(scenario["findings"])
    assert sent > 0
    # Without the delay, requests were lost: this is what the delay phase buys.
    assert failed > 0, scenario["findings"]

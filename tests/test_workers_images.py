"""``graceful serve --workers 4`` in images, judged by the harness on a real engine.

1. Without an engine: the README's FastAPI Dockerfile is docker/fastapi-workers.Dockerfile,
   the file the tests build; the harness names the workers of a supervisor's report.
2. On Docker:
   - a FastAPI app that knows nothing of graceful's runtime (tests/images/fastapi_workers_app.py)
     in that Dockerfile (``CMD ["graceful", "serve", "app:app", "--workers", "4"]``), built
     offline from the local base image and the wheelhouse, passes every scenario in one
     harness run: the default ones, rolling-restart and power-loss (where FUSE is there);
   - the control: the same image with ``CMD uvicorn app:app --workers 4`` fails
     stop-during-stream (and the harness says why), so the run tells the two apart;
   - a worker stuck in its stop is named in the findings (control: the run above names none);
   - the example images serve from four workers with ``WORKERS=4`` (control: one process
     without it).

Synchronous tests, like tests/test_harness_honesty.py: a container scenario gains nothing
from running once per event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from graceful.harness.context import Findings, Settings
from graceful.harness.judges import judge_workers
from graceful.harness.workload import Workload
from tests.harness_servers import BASE_IMAGE, WHEELHOUSE
from tests.test_rolling_restart import _missing
from tests.test_rolling_restart import image as built_image

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.engine import Engine
    from graceful.harness.report import Report, ScenarioResult
    from graceful.harness.scenarios import Scenario

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "fastapi-workers.Dockerfile"
APP = ROOT / "tests" / "images" / "fastapi_workers_app.py"
FASTAPI_IMAGE = "graceful-test-fastapi-workers:latest"
UVICORN_IMAGE = "graceful-test-fastapi-uvicorn-workers:latest"
UVICORN_CMD = '["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8080", "--workers", "4"]'
# Room for rolling-restart's GRACEFUL_DELAY=2 inside each worker's deadline (see the report).
STOP_TIMEOUT = 5

# How a FastAPI user describes the app: whole seconds, an SSE stream; graceful's admin port.
WORKLOAD = Workload(work_url="/slow?s={seconds}", stream_path="/events")


# -- 1. without an engine ---------------------------------------------------------------------


def test_the_readme_shows_the_dockerfile_the_tests_build() -> None:
    """The README's FastAPI Dockerfile is docker/fastapi-workers.Dockerfile, to the byte."""
    blocks = re.findall(r"```dockerfile\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    serving = [b for b in blocks if '"graceful", "serve", "app:app"' in b]
    assert serving == [DOCKERFILE.read_text()]
    assert 'CMD ["graceful", "serve", "app:app", "--workers", "4"]\n' in serving[0]
    assert "\nUSER app\n" in serving[0]


def report_lines(*workers: tuple[int, int, str, int]) -> str:
    """A supervisor's ``shutdown.report`` with these ``(worker, pid, status, code)`` lines."""
    import json

    lines = [
        {"worker": w, "pid": p, "status": s, "exit_code": c, "seconds": 1.5}
        for w, p, s, c in workers
    ]
    code = max((c for *_, c in workers), default=0)
    report = {"exit_code": code, "workers": lines, "event": "shutdown.report"}
    own = {
        "exit_code": 4,
        "failed_hooks": ["http.lifespan"],
        "worker": 2,
        "event": "worker.shutdown.report",
    }
    return "\n".join([json.dumps(own), "not json", json.dumps(report)])


def test_the_judge_names_the_workers_that_did_not_exit_0() -> None:
    """1. A report where worker 2 exited 4 (its own report: a failed hook).
    2. Result: with the container's exit already a problem, the worker is a problem too, quoted
       from the report with its failed hook; with an exit the scenario expects, a note.
    Control: a report where every worker exited 0 adds nothing."""
    logs = report_lines((0, 11, "exit 0 (ok)", 0), (2, 13, "exit 4 (hook_failed)", 4))
    f = Findings()
    f.problem("exited 4 after 1.60 s: a shutdown hook raised")
    judge_workers(f, logs)
    assert f.problems[1] == (
        "1 of 2 workers did not exit 0 (shutdown.report: worker 2 (pid 13): exit 4 "
        "(hook_failed) 1.50 s after the stop began, its failed hooks: http.lifespan)"
    )
    expected = Findings()
    judge_workers(expected, logs)
    assert expected.problems == []
    assert expected.notes[0].endswith("its failed hooks: http.lifespan)")

    clean = Findings()
    judge_workers(clean, report_lines((0, 11, "exit 0 (ok)", 0), (1, 12, "exit 0 (ok)", 0)))
    assert (clean.problems, clean.notes) == ([], [])


def test_the_judge_notes_a_worker_that_died_while_serving() -> None:
    line = (
        '{"worker": 1, "pid": 20, "status": "killed by SIGKILL", "returncode": -9, '
        '"ran_s": 3.2, "event": "worker.exited"}'
    )
    f = Findings()
    judge_workers(f, line)
    assert f.notes == [
        (
            "note: worker 1 (pid 20) exited while serving (killed by SIGKILL, after 3.2 s) "
            "and was replaced"
        )
    ]


# -- 2. on Docker -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_image(graceful_engine: Engine) -> ImageInfo:
    """docker/fastapi-workers.Dockerfile with the FastAPI app as ``app.py``, built offline:
    ``dist/`` holds every wheel (the project's, its dependencies, FastAPI's), and
    ``PIP_NO_INDEX=1`` makes pip use nothing else."""
    import docker.errors

    try:
        graceful_engine.client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        _missing(f"base image {BASE_IMAGE} is missing: run `make images`")
    wheels = [
        *WHEELHOUSE.glob("graceful_stop-*.whl"),
        *WHEELHOUSE.glob("deps/*.whl"),
        *WHEELHOUSE.glob("extra/*.whl"),
    ]
    if not any(w.name.startswith("fastapi-") for w in wheels):
        _missing(f"no FastAPI wheels in {WHEELHOUSE}/extra: run `bash docker/wheelhouse.sh`")
    with tempfile.TemporaryDirectory(prefix="graceful-fastapi-") as tmp:
        context = Path(tmp)
        (context / "dist").mkdir()
        for wheel in wheels:
            shutil.copy(wheel, context / "dist")
        shutil.copy(APP, context / "app.py")
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        return graceful_engine.build(
            context, tag=FASTAPI_IMAGE, buildargs={"BASE_IMAGE": BASE_IMAGE, "PIP_NO_INDEX": "1"}
        )


@pytest.fixture(scope="module")
def uvicorn_image(graceful_engine: Engine, fastapi_image: ImageInfo) -> ImageInfo:
    """The control: the same image, its CMD what a uvicorn user writes."""
    with tempfile.TemporaryDirectory(prefix="graceful-uvicorn-") as tmp:
        dockerfile = f"FROM {fastapi_image.ref}\nCMD {UVICORN_CMD}\n"
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        return graceful_engine.build(tmp, tag=UVICORN_IMAGE)


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every container and volume a Docker test's scenarios started is gone when they end."""
    yield
    if "graceful_engine" not in request.fixturenames:
        return
    engine: Engine = request.getfixturevalue("graceful_engine")
    selector = {"label": f"graceful.harness={engine.run_id}"}
    assert engine.client.containers.list(all=True, filters=selector) == []
    assert engine.client.volumes.list(filters=selector) == []


def run(
    engine: Engine,
    image: ImageInfo,
    scenarios: Sequence[Scenario],
    settings: Settings,
    *,
    check_contract: bool = True,
) -> Report:
    from graceful.harness.scenarios import run_scenarios

    return asyncio.run(
        run_scenarios(engine, image, scenarios, settings, check_contract=check_contract)
    )


def by_name(report: Report) -> dict[str, ScenarioResult]:
    return {result.name: result for result in report.scenarios}


def details(report: Report) -> str:
    lines = [report.table()]
    for result in report.scenarios:
        lines += [f"{result.name} ({result.verdict}):", *(f"  - {x}" for x in result.findings)]
    return "\n".join(lines)


@pytest.mark.docker
@pytest.mark.slow
def test_fastapi_app_under_graceful_serve_with_4_workers_passes_every_scenario(
    graceful_engine: Engine, fastapi_image: ImageInfo
) -> None:
    """One harness run, every scenario: the default ones (kill-under-load: acknowledged writes
    of any of the four workers, to the one SQLite file, survive SIGKILL; stop-during-stream:
    each worker ends its SSE streams), rolling-restart (two replicas, no control roll, to
    keep it short) and power-loss where the host has FUSE (SKIPPED, saying why, elsewhere).
    """
    from graceful.harness.cluster import LB_IMAGE
    from graceful.harness.rolling import RollingRestart
    from graceful.harness.scenarios import make_scenarios, scenario_names
    from graceful.harness.scenarios.power import PowerLoss, power_unavailable

    lb_image = built_image(graceful_engine, LB_IMAGE).ref
    scenarios: list[Any] = make_scenarios(scenario_names())
    scenarios += [RollingRestart(replicas=2, control=False, lb_image=lb_image), PowerLoss()]
    report = run(
        graceful_engine,
        fastapi_image,
        scenarios,
        Settings(stop_timeout=STOP_TIMEOUT, workload=WORKLOAD),
    )
    text = details(report)
    results = by_name(report)
    assert set(results) == {*scenario_names(), "rolling-restart", "power-loss"}
    power = results.pop("power-loss")
    if power_unavailable() is None:
        assert power.verdict == "PASS", text
    else:
        assert power.verdict == "SKIPPED", text
    assert {name: r.verdict for name, r in results.items()} == dict.fromkeys(results, "PASS"), text
    assert all(line.startswith("note: ") for r in report.scenarios for line in r.findings), text

    kill = results["kill-under-load"]
    assert (kill.exit_code, kill.lost) == (137, 0), text
    assert kill.acked >= 30, text
    assert results["stop-idle"].exit_code == 0
    assert results["stop-during-stream"].exit_code == 0
    assert any("ended cleanly" in x for x in results["stop-during-stream"].findings), text
    # Work longer than the budget is cut (exit 3, expected there): the note names the workers.
    over = [x for x in results.pop("stop-over-budget").findings if "did not exit 0" in x]
    assert len(over) == 1, text
    assert "exit 3 (work_cut)" in over[0], text
    assert not any("did not exit 0" in x for r in results.values() for x in r.findings), text


@pytest.mark.docker
@pytest.mark.slow
def test_control_the_same_app_under_uvicorn_workers_fails(
    graceful_engine: Engine, uvicorn_image: ImageInfo
) -> None:
    """The control: ``uvicorn app:app --workers 4`` with the same app, judged the same way
    but for readiness (uvicorn has no admin port: ``/health``). Two of the scenarios above
    FAIL, each saying why:

    - stop-under-load: uvicorn's supervisor keeps its copy of the listener through the stop,
      so new connections are accepted and never served (graceful's supervisor closes its
      copy and the workers drain the backlog);
    - stop-during-stream: the SSE streams never end (``draining(scope)`` is never set outside
      graceful), so docker stop SIGKILLs the container.
    """
    from graceful.harness.scenarios import make_scenarios

    workload = Workload(
        work_url=WORKLOAD.work_url,
        stream_path=WORKLOAD.stream_path,
        admin_port=None,
        ready_path="/health",
        report_event="",
    )
    settings = Settings(stop_timeout=STOP_TIMEOUT, workload=workload)
    scenarios = make_scenarios(["stop-under-load", "stop-during-stream"])
    report = run(graceful_engine, uvicorn_image, scenarios, settings)
    text = details(report)
    load, stream = report.scenarios
    assert load.verdict == "FAIL", text
    assert load.findings[0].startswith("new connections were accepted and "), text
    assert (stream.verdict, stream.exit_code) == ("FAIL", 137), text
    assert "held open until docker stop's 5 s timeout ran out" in stream.findings[0], text


@pytest.mark.docker
@pytest.mark.slow
def test_a_worker_stuck_in_its_stop_is_named(
    graceful_engine: Engine, fastapi_image: ImageInfo
) -> None:
    """1. Worker 2 of 4 blocks its event loop as its lifespan shuts down (``STUCK_WORKER=2``).
    2. docker stop: the container exits 6 (overran) before SIGKILL, and the findings quote
       worker 2's line of the supervisor's shutdown.report, with its pid and how it ended.
    Control: without the stuck worker, the run above names no worker."""
    from graceful.harness.scenarios import StopIdle

    settings = Settings(stop_timeout=3, workload=WORKLOAD, env=(("STUCK_WORKER", "2"),))
    report = run(graceful_engine, fastapi_image, [StopIdle()], settings, check_contract=False)
    (idle,) = report.scenarios
    text = details(report)
    assert (idle.verdict, idle.exit_code) == ("FAIL", 6), text
    assert idle.findings[0].startswith("exited 6 after "), text
    named = [x for x in idle.findings if "workers did not exit 0" in x]
    assert len(named) == 1, text
    assert re.search(
        r"^1 of 4 workers did not exit 0 \(shutdown\.report: worker 2 \(pid \d+\): ", named[0]
    ), text
    assert "worker 0" not in named[0]
    assert "worker 3" not in named[0]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("ref", ["graceful-example-asgi", "graceful-example-aiohttp"])
def test_example_images_with_workers_4_serve_from_four_processes(
    graceful_engine: Engine, ref: str
) -> None:
    """``WORKERS=4``: the example's ``main`` hands over to ``graceful serve`` with four workers
    (exec: still PID 1), each serving the app factory and opening the one store.

    1. stop-over-budget: writes acknowledged by the workers, then requests longer than the
       budget in flight, then docker stop.
    2. Result: the work is cut (exit 3, before SIGKILL), every acknowledged write is there
       after a restart, and the note names the workers that held the cut work, out of 4:
       four processes served.
    Control: without ``WORKERS`` (the asgi example) the same stop names no worker: one
    process, no supervisor.
    """
    from graceful.harness.scenarios import StopOverBudget

    image = built_image(graceful_engine, ref)
    settings = Settings(stop_timeout=3, env=(("WORKERS", "4"),))
    report = run(graceful_engine, image, [StopOverBudget()], settings, check_contract=False)
    text = details(report)
    (over,) = report.scenarios
    assert (over.verdict, over.exit_code, over.lost) == ("PASS", 3, 0), text
    assert over.acked > 0, text
    assert any(re.search(r"\d of 4 workers did not exit 0", x) for x in over.findings), text
    if ref != "graceful-example-asgi":
        return
    single = Settings(stop_timeout=3)
    control = run(graceful_engine, image, [StopOverBudget()], single, check_contract=False)
    (alone,) = control.scenarios
    assert (alone.verdict, alone.exit_code) == ("PASS", 3), details(control)
    assert not any("workers did not exit 0" in x for x in alone.findings), details(control)

"""One description of the app, durability verdicts through templates, fast diagnoses: on a
real engine, with a FastAPI app that has only ``POST /orders`` and ``GET /orders/{id}``.

- The app (tests/images/fastapi_orders_app.py) in docker/fastapi-workers.Dockerfile, built
  offline from the local base image and the wheelhouse like tests/test_workers_images.py,
  served by ``graceful serve app:app``: ``kill-under-load`` PASSes through the write and read
  templates; the control, the same app acknowledging orders it keeps in memory
  (``ORDERS_STORE=memory``), FAILs with lost > 0; and without templates the scenario is
  SKIPPED (no ``/items``), as it was for every such app before.
- ``[tool.graceful.harness]`` in a pyproject.toml: ``graceful harness run`` with no flags and
  ``pytest`` with the plugin and no options judge the app from it alone; a flag overrides it.
- The same app under plain uvicorn has no admin server: the preflight says so, naming
  ``--admin-port off``, in seconds instead of after the 60 s startup timeout; the control,
  the example image whose admin server answers, is not misdiagnosed.

Synchronous tests, like tests/test_harness_honesty.py: a container scenario gains nothing
from running once per event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graceful.harness.context import Settings
from graceful.harness.contract import Capability
from graceful.harness.workload import Workload
from tests.harness_servers import BASE_IMAGE, WHEELHOUSE
from tests.test_harness_config import CHAOS_FILE, doc_block, readme_table
from tests.test_rolling_restart import _missing
from tests.test_rolling_restart import image as built_image

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.contract import Contract
    from graceful.harness.engine import Engine
    from graceful.harness.report import Report

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "fastapi-workers.Dockerfile"
APP = ROOT / "tests" / "images" / "fastapi_orders_app.py"
ORDERS_IMAGE = "graceful-test-fastapi-orders:latest"
UVICORN_IMAGE = "graceful-test-fastapi-orders-uvicorn:latest"
STOP_TIMEOUT = 5
WRITE = 'POST /orders {"id": "{id}", "qty": 1}'
READ = "GET /orders/{id}"
# How a FastAPI user describes the app: whole seconds, no stream, its own write and read.
WORKLOAD = Workload(work_url="/slow?s={seconds}", stream_path="", write=WRITE, read=READ)
# The README's table as written, naming the image the tests build; the scenarios a run takes
# and pytest-asyncio's mode added.
TABLE = readme_table().replace('"orders-api:dev"', f'"{ORDERS_IMAGE}"') + (
    'scenarios = ["kill-under-load", "stop-idle"]\n\n'
    "[tool.pytest.ini_options]\n"
    'asyncio_mode = "auto"\n'
    'asyncio_default_fixture_loop_scope = "function"\n'
)


@pytest.fixture(scope="module")
def orders_image(graceful_engine: Engine) -> ImageInfo:
    """The orders app in docker/fastapi-workers.Dockerfile (every wheel from ``dist/``,
    ``PIP_NO_INDEX=1``), then served by ``graceful serve app:app`` (one process)."""
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
    with tempfile.TemporaryDirectory(prefix="graceful-orders-") as tmp:
        context = Path(tmp)
        (context / "dist").mkdir()
        for wheel in wheels:
            shutil.copy(wheel, context / "dist")
        shutil.copy(APP, context / "app.py")
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        base = graceful_engine.build(
            context,
            tag="graceful-test-fastapi-orders-base:latest",
            buildargs={"BASE_IMAGE": BASE_IMAGE, "PIP_NO_INDEX": "1"},
        )
    return _derived(graceful_engine, base, ORDERS_IMAGE, '["graceful", "serve", "app:app"]')


@pytest.fixture(scope="module")
def uvicorn_image(graceful_engine: Engine, orders_image: ImageInfo) -> ImageInfo:
    """The same app under plain uvicorn: no admin server."""
    cmd = '["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8080"]'
    return _derived(graceful_engine, orders_image, UVICORN_IMAGE, cmd)


def _derived(engine: Engine, base: ImageInfo, tag: str, cmd: str) -> ImageInfo:
    with tempfile.TemporaryDirectory(prefix="graceful-orders-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(f"FROM {base.ref}\nCMD {cmd}\n")
        return engine.build(tmp, tag=tag)


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every container and volume a test's scenarios started is gone when they end."""
    yield
    if "graceful_engine" not in request.fixturenames:
        return
    engine: Engine = request.getfixturevalue("graceful_engine")
    selector = {"label": f"graceful.harness={engine.run_id}"}
    assert engine.client.containers.list(all=True, filters=selector) == []
    assert engine.client.volumes.list(filters=selector) == []


def run(engine: Engine, image: ImageInfo, names: list[str], settings: Settings) -> Report:
    from graceful.harness.scenarios import make_scenarios, run_scenarios

    report = asyncio.run(run_scenarios(engine, image, make_scenarios(names), settings))
    print(report.table(width=200))  # on failure, and with -rA: what was measured
    return report


def settings(workload: Workload = WORKLOAD, **env: str) -> Settings:
    return Settings(stop_timeout=STOP_TIMEOUT, workload=workload, env=tuple(env.items()))


def test_templates_give_an_app_without_items_a_durability_verdict(
    graceful_engine: Engine, orders_image: ImageInfo
) -> None:
    report = run(graceful_engine, orders_image, ["kill-under-load"], settings())
    (result,) = report.scenarios
    assert result.passed, result.findings
    assert result.exit_code == 137
    assert result.acked >= 30  # min_acked before each kill
    assert result.lost == 0
    items = next(line for line in report.contract if line.startswith("items"))
    assert items.startswith("items: yes:"), items
    assert "answered 404 for one never written" in items


def test_control_an_app_that_acknowledges_from_memory_fails_with_lost_writes(
    graceful_engine: Engine, orders_image: ImageInfo
) -> None:
    memory = settings(ORDERS_STORE="memory")
    (result,) = run(graceful_engine, orders_image, ["kill-under-load"], memory).scenarios
    assert result.verdict.value == "FAIL", result.findings
    assert result.lost > 0
    assert result.acked >= result.lost
    assert "acknowledged writes lost" in result.problems[0]


def test_templates_judge_a_power_cut_too(graceful_engine: Engine, orders_image: ImageInfo) -> None:
    """power-loss reads the acknowledged orders back through the read template: the durable
    app keeps them all; the control (orders in memory) loses them."""
    from tests.test_harness_power import require_fuse

    require_fuse()
    report = run(graceful_engine, orders_image, ["power-loss"], settings())
    (durable,) = report.scenarios
    assert durable.passed, durable.findings
    assert durable.acked >= 30
    assert durable.lost == 0
    memory = run(graceful_engine, orders_image, ["power-loss"], settings(ORDERS_STORE="memory"))
    (control,) = memory.scenarios
    assert control.verdict.value == "FAIL", control.findings
    assert control.lost == control.acked > 0
    assert "acknowledged writes lost after a power cut" in control.problems[0]


def test_control_without_templates_the_app_gets_no_durability_verdict(
    graceful_engine: Engine, orders_image: ImageInfo
) -> None:
    """What every app without the examples' /items got before the templates."""
    plain = Workload(work_url="/slow?s={seconds}", stream_path="")
    report = run(graceful_engine, orders_image, ["kill-under-load"], settings(plain))
    (result,) = report.scenarios
    assert result.verdict.value == "SKIPPED"
    assert "POST /items" in result.headline
    assert "HTTP 404" in result.headline  # not acknowledged: the app has no /items


def test_harness_run_and_soak_judge_the_app_from_pyproject_alone(
    graceful_engine: Engine, orders_image: ImageInfo, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text(TABLE)
    below = tmp_path / "src" / "orders"
    below.mkdir(parents=True)  # found from the current directory upwards
    ok = harness(below, "run", "--json", str(tmp_path / "report.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all 2 scenarios passed" in ok.stdout
    assert "POST /orders" in ok.stdout  # the contract line names the write template
    # The run names the file it used, once, and so does its JSON report.
    said = f"config: {tmp_path / 'pyproject.toml'} [tool.graceful.harness]"
    assert ok.stderr.count(said) == 1, ok.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"] == str(tmp_path / "pyproject.toml")
    # A flag beats the table: the same run, the app now keeping orders in memory.
    lost = harness(below, "run", "--env", "ORDERS_STORE=memory", "--scenario", "kill-under-load")
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "acknowledged writes lost" in lost.stdout
    soak = harness(below, "soak", "--rounds", "2", "--faults", "kill,stop")
    assert soak.returncode == 0, soak.stdout + soak.stderr
    assert "PASS: 2 rounds, 0 of" in soak.stdout


def harness(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graceful.harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


ORDERS_TEST = textwrap.dedent(
    """
    async def test_acked_orders_survive_sigkill(graceful_harness):
        service = await graceful_harness.start()
        async with graceful_harness.load(service) as client:
            acked = [r.item_id for r in [await client.write() for _ in range(5)] if r.acked]
        await graceful_harness.kill(service)
        assert set(acked) <= await graceful_harness.stored_ids(service.volume, acked)
        assert len(acked) == 5
    """
)


def test_pytest_plugin_runs_the_chaos_tests_from_pyproject_alone(
    graceful_engine: Engine, orders_image: ImageInfo, tmp_path: Path
) -> None:
    """The docs' test_chaos.py, as written, with the table and no option."""
    (tmp_path / "pyproject.toml").write_text(TABLE)
    (tmp_path / "test_chaos.py").write_text(doc_block(ROOT / "docs" / "harness.md", CHAOS_FILE))
    (tmp_path / "test_orders.py").write_text(ORDERS_TEST)
    chosen = "stop-idle or kill-under-load or orders or stream"
    ok = pytest_in(tmp_path, "-k", chosen, "-rs")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 passed, 1 skipped" in ok.stdout  # no stream: stop-during-stream is skipped
    assert "stop-during-stream: skipped: needs stream: no stream path" in ok.stdout
    # Control: an option beats the table, and the verdict follows it.
    lost = pytest_in(tmp_path, "--graceful-env", "ORDERS_STORE=memory", "-k", "kill-under-load")
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "acknowledged writes lost" in lost.stdout


def pytest_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRACEFUL_IMAGE"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def preflight(engine: Engine, image: ImageInfo, workload: Workload) -> Contract:
    from graceful.harness.preflight import preflight as check

    return asyncio.run(check(engine, image, Settings(workload=workload), needs=()))


def test_no_admin_server_is_diagnosed_in_seconds(
    graceful_engine: Engine, uvicorn_image: ImageInfo
) -> None:
    from graceful.harness.container import ContainerError

    began = time.monotonic()
    with pytest.raises(ContainerError) as caught:
        preflight(graceful_engine, uvicorn_image, Workload(work_url="/slow?s={seconds}"))
    took = time.monotonic() - began
    print(f"diagnosed in {took:.1f} s (startup timeout 60 s)")
    text = str(caught.value)
    assert took < 25, text  # was the whole startup timeout, 60 s
    # Its uvicorn logs that it serves and nothing of an admin server: "none" after the
    # grace for a server other than graceful's (a third of the startup timeout, at most 10 s).
    assert "nothing answered on the admin port 9090 for 1" in text
    assert "the logs show the service serving and no admin server" in text
    # The last log lines are the app's, not the harness's polling of GET / and /readyz.
    assert "lines of the harness's own polling left out" in text
    assert "Uvicorn running on" in text
    assert "--admin-port off" in text
    assert 'admin_port = "off"' in text
    # The advice works: described as it is, the same image is checked.
    described = Workload(work_url="/slow?s={seconds}", admin_port=None, ready_path="/health")
    assert preflight(graceful_engine, uvicorn_image, described).has(Capability.WORK)


def test_control_an_admin_server_that_answers_is_not_misdiagnosed(
    graceful_engine: Engine,
) -> None:
    example = built_image(graceful_engine, "graceful-example-asgi")
    began = time.monotonic()
    contract = preflight(graceful_engine, example, Workload())
    print(f"the example was checked in {time.monotonic() - began:.1f} s")
    assert contract.has(Capability.WORK)


# -- after the attack ---------------------------------------------------------------------------

# The orders app, keeping orders in memory (ORDERS_STORE=memory), whose read answers 200 for
# any id once the container has been restarted on its volume: lost writes that a read-back
# of the acknowledged ids alone would "find".
FORGETFUL_APP = """
import os

from fastapi.responses import JSONResponse

from app import app

MARK = "/data/started"
RESTARTED = os.path.exists(MARK)
open(MARK, "a").close()


@app.middleware("http")
async def answer_any_id_after_a_restart(request, call_next):
    if RESTARTED and request.method == "GET" and request.url.path.startswith("/orders/"):
        return JSONResponse({"id": request.url.path.rsplit("/", 1)[1]})
    return await call_next(request)
"""

# The same app under plain uvicorn, with an admin server of its own that opens ADMIN_DELAY
# seconds after the app is imported (after the main port answers): slow, not absent.
SLOW_ADMIN_APP = """
import http.server
import os
import threading
import time

from app import app


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def admin():
    time.sleep(float(os.environ.get("ADMIN_DELAY", "6")))
    port = int(os.environ["ADMIN_PORT"])
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Ready).serve_forever()


threading.Thread(target=admin, daemon=True).start()
"""


def _with_module(
    engine: Engine, base: ImageInfo, tag: str, name: str, source: str, cmd: str
) -> ImageInfo:
    with tempfile.TemporaryDirectory(prefix="graceful-orders-") as tmp:
        (Path(tmp) / f"{name}.py").write_text(source)
        (Path(tmp) / "Dockerfile").write_text(
            f"FROM {base.ref}\nCOPY {name}.py /app/{name}.py\nCMD {cmd}\n"
        )
        return engine.build(tmp, tag=tag)


def test_a_read_that_finds_any_id_after_a_restart_fails_instead_of_passing(
    graceful_engine: Engine, orders_image: ImageInfo
) -> None:
    """HIGH: every write acknowledged from memory, lost by the kill, "found" after the
    restart by a read that answers 200 for any id: PASS, lost 0, before the control reads.
    Control: the same app without the catch-all read FAILs with the writes lost (see
    test_control_an_app_that_acknowledges_from_memory_fails_with_lost_writes)."""
    image = _with_module(
        graceful_engine, orders_image, "graceful-test-fastapi-orders-forgetful:latest",
        "forgetful", FORGETFUL_APP, '["graceful", "serve", "forgetful:app"]',
    )  # fmt: skip
    report = run(graceful_engine, image, ["kill-under-load"], settings(ORDERS_STORE="memory"))
    (result,) = report.scenarios
    assert result.verdict.value == "FAIL", result.findings
    assert result.acked > 0
    problem = result.problems[0]
    assert "acknowledged writes could not be checked" in problem, problem
    assert "answered 2xx for 3 of 3 ids never written" in problem


def test_a_slow_admin_server_is_waited_for_not_called_missing(
    graceful_engine: Engine, uvicorn_image: ImageInfo
) -> None:
    """An admin server that opens 6 s after the main port was called "none" after 3 s.
    Control: test_no_admin_server_is_diagnosed_in_seconds (the same image, no admin server
    at all, still diagnosed long before the startup timeout)."""
    image = _with_module(
        graceful_engine, uvicorn_image, "graceful-test-fastapi-orders-slow-admin:latest",
        "slow_admin", SLOW_ADMIN_APP,
        '["uvicorn", "slow_admin:app", "--host", "0.0.0.0", "--port", "8080"]',
    )  # fmt: skip
    began = time.monotonic()
    contract = preflight(graceful_engine, image, Workload(work_url="/slow?s={seconds}"))
    print(f"ready through the slow admin server in {time.monotonic() - began:.1f} s")
    assert contract.has(Capability.WORK)


def test_without_a_log_line_that_it_serves_the_admin_port_is_not_yet_answering_not_none(
    graceful_engine: Engine, uvicorn_image: ImageInfo
) -> None:
    """The same app under uvicorn --log-level warning logs nothing when it serves: no
    evidence for "none", so the start waits out the startup timeout and says the admin port
    was not yet answering (and for how long the main port had). Control: with its serving
    line logged, "none" is said before the timeout
    (test_no_admin_server_is_diagnosed_in_seconds)."""
    from graceful.harness.container import ContainerError
    from graceful.harness.preflight import preflight as check

    quiet = _derived(
        graceful_engine, uvicorn_image, "graceful-test-fastapi-orders-quiet:latest",
        '["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8080", "--log-level", "warning"]',
    )  # fmt: skip
    began = time.monotonic()
    described = Settings(workload=Workload(work_url="/slow?s={seconds}"), startup_timeout=8.0)
    with pytest.raises(ContainerError) as caught:
        asyncio.run(check(graceful_engine, quiet, described, needs=()))
    took = time.monotonic() - began
    text = str(caught.value)
    print(f"not ready after {took:.1f} s: {text}")
    assert "was not ready within 8.0 s" in text
    assert "the admin port 9090 was not yet answering, while the main port 8080 had answered" in (
        text
    )
    assert "the image has none. Judge" not in text  # the early conclusion's words

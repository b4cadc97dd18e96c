"""The swarm-update scenario's long runs: controls, the full command line, the stack file, Ctrl-C.

Each takes one to three minutes of real Swarm updates, so they run only when asked:
``GRACEFUL_SWARM_LONG=1`` (``make test-swarm``); ``make test`` runs the short roll of
tests/test_swarm.py instead.

1. Controls: plain uvicorn (no delay phase) fails under the default balancer profile, with its
   failures counted, and passes under ``fast`` (Swarm's own ~2 s wait covers a balancer that
   re-resolves every 0.5 s); the example with ``GRACEFUL_DELAY=0`` fails under the default
   profile, which shows what the delay buys.
2. ``graceful harness run --image graceful-example-asgi --scenario swarm-update`` passes with
   its defaults (three rolls, the default profile), 0 failed of at least 500 requests.
3. ``deploy/swarm/stack.yml`` deploys (``docker stack deploy``), serves through its balancer,
   loses nothing through ``docker service update --force``, and goes away.
4. Ctrl-C at several points of a run leaves no service, no network, and the swarm state as
   it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from graceful.harness.scenarios.swarm import SwarmUpdate
from graceful.harness.swarm_profile import PROFILES
from graceful.harness.swarm_state import take_lock
from graceful.harness.workload import Workload
from tests.support import ROOT, free_port
from tests.test_swarm import EXAMPLE, swarm_images, swarm_view  # noqa: F401 (a fixture)

if TYPE_CHECKING:
    from graceful.harness.engine import Engine
    from graceful.harness.report import ScenarioResult

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("GRACEFUL_SWARM_LONG") != "1",
        reason="minutes of Swarm updates: run with GRACEFUL_SWARM_LONG=1 (make test-swarm)",
    ),
]

PLAIN = "graceful-test-plain-uvicorn:latest"
PLAIN_WORKLOAD = Workload(
    admin_port=None,
    work_url="/slow?s={seconds}",
    ready_path="/health",
    items_path="",
    stream_path="",
    volume_path="",
    report_event="",
)


def run(engine: Engine, ref: str, scenario: SwarmUpdate, workload: Workload) -> ScenarioResult:
    import asyncio

    from graceful.harness.context import Settings
    from graceful.harness.scenarios import run_scenarios

    report = asyncio.run(
        run_scenarios(engine, engine.image(ref), [scenario], Settings(workload=workload))
    )
    (result,) = report.scenarios
    print(report.table(width=250))
    return result


@pytest.fixture(scope="module")
def plain_uvicorn(graceful_engine: Engine) -> str:
    """The plain-uvicorn image of tests/images/, built alone from the same context the harness
    tests build every test image from (tests/harness_servers.py)."""
    import shutil
    import tempfile

    from tests.harness_servers import BASE_IMAGE, IMAGES_DIR, WHEELHOUSE

    if not any(WHEELHOUSE.glob("graceful_stop-*.whl")):
        pytest.skip(f"no wheelhouse in {WHEELHOUSE}: run `make images`")
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(IMAGES_DIR, context)
        shutil.copytree(WHEELHOUSE, context / "wheelhouse")
        graceful_engine.build(
            context,
            tag=PLAIN,
            dockerfile="plain-uvicorn.Dockerfile",
            buildargs={"BASE_IMAGE": BASE_IMAGE},
        )
    return PLAIN


# -- 1. controls ------------------------------------------------------------------------------


@pytest.mark.usefixtures("swarm_images")
def test_plain_uvicorn_fails_under_the_default_profile_and_passes_under_fast(
    graceful_engine: Engine, plain_uvicorn: str
) -> None:
    """1. Plain uvicorn (it closes its listener at SIGTERM) as 3 tasks, one stop-first roll,
       behind the default profile (hold obsolete 30s, inter 2s, fall 3).
    2. The same behind the fast profile (hold obsolete 1s, resolve 500ms).

    Result: 1 fails with the refused/timed-out requests counted; 2 passes, because the fast
    balancer forgets a task within 1.5 s of Swarm dropping it from DNS, inside Swarm's ~2 s.
    """
    rolls = ("stop-first",)
    slow = run(graceful_engine, plain_uvicorn, SwarmUpdate(rolls=rolls), PLAIN_WORKLOAD)
    assert not slow.passed
    assert slow.failed > 0
    assert slow.ok + slow.failed == slow.sent
    (problem,) = [p for p in slow.problems if "through the load balancer failed" in p]
    assert f"{slow.failed} of {slow.sent} requests" in problem
    assert slow.exit_code == 0  # uvicorn itself exits 0 at once: only the clients saw it

    fast = SwarmUpdate(rolls=rolls, profile=PROFILES["fast"])
    quick = run(graceful_engine, plain_uvicorn, fast, PLAIN_WORKLOAD)
    assert quick.passed, quick.findings
    assert quick.failed == 0


@pytest.mark.usefixtures("swarm_images")
def test_the_example_without_a_delay_fails_under_the_default_profile(
    graceful_engine: Engine,
) -> None:
    """GRACEFUL_DELAY=0: /readyz turns 503 at the signal, but the listener closes at once,
    while the default balancer still routes to the task for up to 7 s.

    Result: FAIL, the failures counted, the finding naming the delay the profile needs.
    """
    result = run(graceful_engine, EXAMPLE, SwarmUpdate(rolls=("stop-first",), delay=0), Workload())
    assert not result.passed
    assert result.failed > 0
    (problem,) = [p for p in result.problems if "through the load balancer failed" in p]
    assert "GRACEFUL_DELAY=0 s is shorter than the 7 s this balancer needs" in problem


# -- 2. the command line, with its defaults ---------------------------------------------------


@pytest.mark.usefixtures("swarm_images")
def test_the_cli_passes_three_rolls_under_the_default_profile(
    graceful_engine: Engine, tmp_path: Path
) -> None:
    before = swarm_view(graceful_engine.client)
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "graceful.harness", "run", "--image", EXAMPLE,
         "--scenario", "swarm-update", "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert scenario["requests"]["failed"] == 0
    assert scenario["requests"]["sent"] >= 500
    text = "\n".join(scenario["findings"])
    for number, kind in enumerate(("stop-first", "start-first", "one-replica"), 1):
        assert f"roll {number} ({kind}, completed" in text
    assert "load balancer profile default (hold valid 10s, hold obsolete 30s" in text
    assert "GRACEFUL_DELAY >= 7 s; the tasks ran with GRACEFUL_DELAY=8 s" in text
    assert swarm_view(graceful_engine.client) == before


# -- 3. the stack file ------------------------------------------------------------------------


def _docker(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        return type(exc).__name__


@pytest.mark.usefixtures("swarm_images")
def test_the_stack_file_deploys_and_loses_nothing_through_an_update(
    graceful_engine: Engine,
) -> None:
    """1. ``docker stack deploy -c deploy/swarm/stack.yml`` (a swarm made for it when the
       engine is in none; the balancer published on a free port).
    2. Steady requests through 127.0.0.1:PORT while ``docker service update --force`` rolls
       the three tasks (start-first, monitor, rollback on failure, as the file says).
    3. ``docker stack rm``.

    Result: every request answered 200, the update completed, the engine as before.
    """
    import docker.errors

    client = graceful_engine.client
    lock = take_lock()
    stack = f"gstest{os.getpid()}"
    network = f"{stack}_app"
    made = False
    try:
        before = swarm_view(client, network)
        if before.node_state == "inactive":
            client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
            made = True
        elif before.services:
            pytest.skip("the engine's swarm runs services: not deploying beside them")
        port = free_port()
        _docker("stack", "deploy", "-c", "deploy/swarm/stack.yml", stack,
                env={"GRACEFUL_LB_PORT": str(port)})  # fmt: skip
        url = f"http://127.0.0.1:{port}/work?ms=20"
        deadline = time.monotonic() + 120
        while _get(url) != "200":
            assert time.monotonic() < deadline, "the stack never answered through its LB"
            time.sleep(0.5)
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                outcomes[_get(url)] += 1

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            _docker("service", "update", "--force", "--detach=false", f"{stack}_app")
            state = _docker("service", "inspect", f"{stack}_app",
                            "--format", "{{.UpdateStatus.State}}")  # fmt: skip
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        print(dict(outcomes))
        assert state.strip() == "completed"
        assert outcomes["200"] > 100
        assert set(outcomes) == {"200"}, outcomes
    finally:
        # Each step on its own: one that fails must not leave the swarm behind.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["docker", "stack", "rm", stack], check=False, timeout=60)
        mine = {"label": f"com.docker.stack.namespace={stack}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.containers.list(all=True, filters=mine):
            time.sleep(0.5)
        for _ in range(40):
            left = client.networks.list(filters=mine)
            if not left:
                break
            for net in left:
                with contextlib.suppress(docker.errors.APIError):
                    net.remove()
            time.sleep(0.5)
        if made:
            with contextlib.suppress(docker.errors.APIError):
                client.swarm.leave(force=True)
            if "docker_gwbridge" not in before.networks:
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_network("docker_gwbridge")
        lock.close()
    assert swarm_view(client, network) == before


# -- 4. Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [3.0, 8.0, 20.0])
@pytest.mark.usefixtures("swarm_images")
def test_ctrl_c_leaves_the_engine_as_it_was(graceful_engine: Engine, after: float) -> None:
    """SIGINT the harness ``after`` seconds into a swarm-update run: while it joins the swarm
    and creates the service (3 s), while the first tasks start (8 s), in the middle of a roll
    under load (20 s).

    Result: the harness exits 130; no service, no task container, no network of the run is
    left; the swarm state is what it was (and the machine's swarm lock is free again).
    """
    client = graceful_engine.client
    before = swarm_view(client)
    proc = subprocess.Popen(
        [sys.executable, "-m", "graceful.harness", "run", "--image", EXAMPLE,
         "--scenario", "swarm-update", "--swarm-lb", "fast"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(output)
    assert proc.returncode == 130, output
    assert swarm_view(client) == before
    assert not client.containers.list(all=True, filters={"label": "com.docker.swarm.service.id"})
    take_lock(timeout=5).close()  # nobody holds it any more


@pytest.mark.usefixtures("swarm_images")
def test_graceful_harness_clean_removes_what_a_killed_run_left(graceful_engine: Engine) -> None:
    """1. SIGKILL the harness in the middle of a swarm-update run (nothing of it can clean up).
    2. ``graceful harness clean``.

    Result: after 1 the engine holds the run's service and swarm (the control: the fault is
    there); after 2 the swarm state, services and networks are what they were before 1.
    """
    client = graceful_engine.client
    before = swarm_view(client)
    proc = subprocess.Popen(
        [sys.executable, "-m", "graceful.harness", "run", "--image", EXAMPLE,
         "--scenario", "swarm-update", "--swarm-lb", "fast"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not swarm_view(client).services - before.services:
            assert time.monotonic() < deadline, "the run never created its service"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    left = swarm_view(client)
    assert left != before
    clean = subprocess.run(
        [sys.executable, "-m", "graceful.harness", "clean"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert "Swarm services/networks/swarms left by harness runs" in clean.stdout
    assert swarm_view(client) == before

"""The built images keep the promises a graceful stop depends on.

Exec-form command with Python as PID 1 (a shell as PID 1 never forwards
SIGTERM), not root, SIGTERM as the stop signal, a health check, no secrets in
the environment, and a clean exit 0 on ``docker stop``. The images are made by
``docker/build.sh``; an image that is not built yet is skipped with a message.
Containers run with no network at all, so nothing here sends traffic anywhere.
"""

from __future__ import annotations

import gc
import io
import os
import re
import signal
import tarfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.docker

EXAMPLE_IMAGES = ["graceful-example-asgi", "graceful-example-aiohttp", "graceful-example-worker"]
LB_IMAGE = "graceful-lb:bookworm"
APP_UID = 10001
# Pinned, so building the client never talks to the engine (no version probe).
API_VERSION = "1.41"
PYTHON = "/opt/venv/bin/python"
SERVICE = "/app/service.py"
# Contract env of the example services (DESIGN.md) that the image sets.
EXPECTED_ENV = {
    "PORT": "8080",
    "ADMIN_PORT": "9090",
    "ADMIN_HOST": "127.0.0.1",  # loopback unless the operator opts in (Kubernetes, harness)
    "GRACEFUL_STOP_TIMEOUT": "10",
    "STATE_PATH": "/data/state.sqlite",
    "PYTHONUNBUFFERED": "1",
}
SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|AUTH", re.IGNORECASE)
# Hang guards only: every wait below normally ends long before these.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20

NO_ENGINE = (
    "no Docker engine answers: run `bash docker/engine.sh` (as root on Debian it installs "
    "and starts docker.io), start Docker another way, or point DOCKER_HOST at an engine"
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Docker client; skipped without an engine, a failure under ``CI=true``."""
    c = docker.DockerClient.from_env(timeout=60, version=API_VERSION)
    problem = None
    try:
        c.ping()
    except Exception as exc:
        problem = f"{NO_ENGINE} ({exc})"
    if problem is not None:
        c.close()
        # The SDK leaks the socket of a failed unix-socket connect; collect it
        # here, where its ResourceWarning is expected, not at interpreter exit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    yield c
    c.close()


def _image(client: Any, name: str) -> Any:
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {name} is not built yet: run `bash docker/build.sh`")


@pytest.fixture(params=EXAMPLE_IMAGES)
def image(request: pytest.FixtureRequest, client: Any) -> Any:
    """One built example image (skipped when it is not built)."""
    return _image(client, request.param)


def _config(image: Any) -> dict[str, Any]:
    config: dict[str, Any] = image.attrs["Config"]
    return config


def _exec(container: Any, *argv: str) -> str:
    code, output = container.exec_run(list(argv))
    text: str = output.decode()
    assert code == 0, f"{argv} failed with {code}: {text}"
    return text


def _wait_caught(container: Any, sig: signal.Signals) -> None:
    """Wait until PID 1 of the container has a handler for ``sig`` (SigCgt in /proc)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        status = _exec(container, "cat", "/proc/1/status")
        caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt"))
        if int(caught, 16) & (1 << (sig - 1)):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"PID 1 never caught {sig.name}: SigCgt={caught}")
        time.sleep(0.05)


def _wait_running(container: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        container.reload()
        if container.status == "running":
            return
        if container.status in {"exited", "dead"} or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            pytest.fail(f"container is {container.status}, not running; logs:\n{logs}")
        time.sleep(0.1)


@pytest.fixture
def running(client: Any, image: Any) -> Iterator[Any]:
    """The image's own command, running in a container with no network."""
    container = client.containers.run(image.id, detach=True, network_mode="none")
    try:
        _wait_running(container)
        yield container
    finally:
        container.remove(force=True, v=True)


def test_command_is_exec_form_python(image: Any) -> None:
    config = _config(image)
    assert not config.get("Entrypoint"), "an ENTRYPOINT would wrap the service"
    assert config["Cmd"] == [PYTHON, SERVICE]


def test_runs_as_non_root_user(image: Any) -> None:
    user = _config(image).get("User") or "root"
    assert user.split(":")[0] not in {"", "0", "root"}


def test_stop_signal_is_sigterm(image: Any) -> None:
    assert _config(image).get("StopSignal") in {"SIGTERM", "15"}


def test_healthcheck_probes_liveness(image: Any) -> None:
    health = _config(image).get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "/opt/venv/bin/graceful", "probe", "livez"]


def test_environment_has_contract_and_no_secrets(image: Any) -> None:
    env = dict(item.split("=", 1) for item in _config(image).get("Env") or [])
    assert {k: env.get(k) for k in EXPECTED_ENV} == EXPECTED_ENV
    assert not [k for k in env if SECRET_NAME.search(k)], "secret-like names in ENV"


def test_data_volume_declared(image: Any) -> None:
    assert "/data" in (_config(image).get("Volumes") or {})


def test_python_is_pid_1_as_app_user(running: Any) -> None:
    argv = _exec(running, "cat", "/proc/1/cmdline").rstrip("\0").split("\0")
    assert argv == [PYTHON, SERVICE]
    status = _exec(running, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(APP_UID)] * 4
    # The state volume must be writable by that user, or flushes fail at stop.
    assert _exec(running, "stat", "-c", "%u", "/data").strip() == str(APP_UID)


def _wait_ready(container: Any) -> None:
    """Wait for ``/readyz`` on the admin port, from inside the container.

    A stop sent before the service installed its handlers would be ignored
    (PID 1 has no default signal actions), which says nothing about the image.
    """
    probe = (
        "import os, urllib.request; urllib.request.urlopen("
        "f\"http://127.0.0.1:{os.environ['ADMIN_PORT']}/readyz\", timeout=2)"
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        code, _ = container.exec_run([PYTHON, "-c", probe])
        if code == 0:
            return
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            pytest.fail(f"service never became ready ({container.status}); logs:\n{logs}")
        time.sleep(0.2)


def test_docker_stop_exits_0(running: Any) -> None:
    _wait_ready(running)
    running.stop(timeout=STOP_TIMEOUT_S)
    result = running.wait(timeout=STOP_TIMEOUT_S)
    logs = running.logs().decode(errors="replace")
    assert result["StatusCode"] == 0, logs
    # 137 would mean SIGKILL after the timeout; OOMKilled would hide behind it too.
    assert not running.attrs["State"]["OOMKilled"]


def test_healthcheck_command_passes(image: Any, running: Any) -> None:
    test = _config(image)["Healthcheck"]["Test"]
    assert test[0] == "CMD", "exec form: no shell needed in the image"
    code, _ = running.exec_run([PYTHON, "-c", "import graceful.cli"])
    if code != 0:
        pytest.skip("graceful.cli (`graceful probe`) is not in this image yet")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        code, output = running.exec_run(test[1:])
        if code == 0:
            return
        assert time.monotonic() < deadline, f"{test[1:]} keeps failing: {output.decode()}"
        time.sleep(0.2)


HAPROXY_CFG = b"""\
global
    log stdout format raw local0
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend probe
    bind :8080
    http-request return status 200 content-type text/plain string ok
"""


def _tar_one(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_lb_image_runs_haproxy_as_pid_1_and_soft_stops(client: Any) -> None:
    image = _image(client, LB_IMAGE)
    config = _config(image)
    assert config.get("User") not in {None, "", "root", "0"}
    assert config.get("StopSignal") == "SIGUSR1"
    container = client.containers.create(image.id, network_mode="none")
    try:
        assert container.put_archive("/usr/local/etc/haproxy", _tar_one("haproxy.cfg", HAPROXY_CFG))
        container.start()
        _wait_running(container)
        # It read empty once in CI right after the start: read it again until it is not.
        deadline = time.monotonic() + START_TIMEOUT_S
        argv = [""]
        while argv[0] == "" and time.monotonic() < deadline:
            argv = _exec(container, "cat", "/proc/1/cmdline").rstrip("\0").split("\0")
        assert argv[0] == "haproxy"
        # Its signal handlers are in place once the master reports the worker up.
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"Loading success" not in container.logs():
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                pytest.fail(f"haproxy did not start: {container.logs().decode(errors='replace')}")
            time.sleep(0.1)
        # The kernel drops a signal PID 1 has no handler for: stop only once SIGUSR1 is caught.
        _wait_caught(container, signal.SIGUSR1)
        container.stop(timeout=STOP_TIMEOUT_S)
        result = container.wait(timeout=STOP_TIMEOUT_S)
        assert result["StatusCode"] == 0, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)

"""graceful/harness/haproxy.cfg: the load balancer of the rolling-restart scenario (the one
copy: the harness ships and mounts it, docker/lb.Dockerfile copies it into the image).

1. HAProxy itself accepts the file (``haproxy -c``), with its defaults and with the harness's
   environment overrides, and rejects broken variants, so the check can fail.
2. The settings that make the scenario honest are there: health checks on the admin port's
   ``/readyz`` that react within a second, no retries and no redispatch (a Kubernetes Service
   retries nothing), keep-alive to the replicas, nothing that needs root.
3. On a real Docker engine: HAProxy in graceful-lb:bookworm finds replicas by their network
   alias, stops routing to one whose ``/readyz`` fails, and lets a refused connection reach the
   client as an error instead of retrying it elsewhere. Traffic goes only to the LB's port
   published on 127.0.0.1; replicas live on a private network.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

CONFIG = Path(__file__).resolve().parent.parent / "graceful" / "harness" / "haproxy.cfg"
LB_IMAGE = "graceful-lb:bookworm"
REPLICA_IMAGE = "graceful-base:bookworm"
LB_CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
# Hang guards only: every wait below normally ends in a second or two.
WAIT_S = 30.0


def haproxy_binary() -> str:
    # /usr/sbin is not on every PATH, and Debian's package installs there.
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        message = "haproxy is not installed on this machine (apt-get install haproxy)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def haproxy_check(
    path: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``haproxy -c``: parse and resolve the whole configuration without starting."""
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(path)],
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sections(text: str) -> dict[str, list[str]]:
    """Config lines (comments and blanks dropped) under each ``section name`` header."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not raw[0].isspace():
            current = found.setdefault(line, [])
        else:
            current.append(" ".join(line.split()))
    return found


# -- 1. HAProxy accepts it ------------------------------------------------------------------


def test_haproxy_accepts_the_config_with_its_defaults() -> None:
    result = haproxy_check(CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_the_harness_overrides() -> None:
    env = {"LB_BACKEND": "rolling-app", "LB_SLOTS": "3", "LB_APP_PORT": "8081"}
    result = haproxy_check(CONFIG, env | {"LB_ADMIN_PORT": "9091", "LB_DNS": "127.0.0.11:53"})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "edit"),
    [
        pytest.param({"LB_SLOTS": "many"}, None, id="slot count not a number"),
        # HAProxy reads "retries zero" or "port ninety" as 0 without a word (atoi), which is
        # why the values themselves are pinned in section 2 below.
        pytest.param({}, ("    retries 0", "    retrys 0"), id="misspelled keyword"),
        pytest.param({}, ("timeout check 1s", "timeout check 1parsec"), id="unknown time unit"),
        pytest.param({}, ("fall 1", "fall"), id="fall without a count"),
        pytest.param({}, ("http-check expect status 200", "http-check expect"), id="bad expect"),
    ],
)
def test_haproxy_rejects_a_broken_config(
    tmp_path: Path, env: dict[str, str], edit: tuple[str, str] | None
) -> None:
    text = CONFIG.read_text(encoding="utf-8")
    if edit is not None:
        assert edit[0] in text
        text = text.replace(edit[0], edit[1])
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(text, encoding="utf-8")
    assert haproxy_check(broken, env).returncode != 0


# -- 2. the settings the scenario depends on ------------------------------------------------


@pytest.fixture(scope="module")
def config() -> dict[str, list[str]]:
    return sections(CONFIG.read_text(encoding="utf-8"))


def test_nothing_is_retried_or_redispatched(config: dict[str, list[str]]) -> None:
    every_line = [line for lines in config.values() for line in lines]
    assert "retries 0" in config["defaults"]
    assert "no option redispatch" in config["defaults"]
    assert not [line for line in every_line if line.startswith(("retry-on", "option redispatch"))]
    assert not [line for line in every_line if re.match(r"retries [1-9]", line)]


def test_replicas_are_checked_on_admin_readyz_and_react_fast(config: dict[str, list[str]]) -> None:
    backend = config["backend replicas"]
    assert "option httpchk" in backend
    assert "http-check expect status 200" in backend
    (send,) = [line for line in backend if line.startswith("http-check send")]
    assert "meth GET" in send
    assert "uri /readyz" in send
    (server,) = [line for line in backend if line.startswith("default-server")]
    words = server.split()
    settings = dict(itertools.pairwise(words))
    assert settings["port"] == '"${LB_ADMIN_PORT-9090}"'
    assert "check" in words
    assert settings["inter"] == "500ms"
    assert settings["fall"] == "1"
    assert settings["rise"] == "2"
    # Marking a replica down must not cut the requests already on it: that is its drain.
    assert not [line for line in backend if "on-marked-down" in line]


def test_connections_to_replicas_are_kept_alive(config: dict[str, list[str]]) -> None:
    every_line = [line for lines in config.values() for line in lines]
    assert "option http-keep-alive" in config["defaults"]
    assert [line for line in every_line if line.startswith("http-reuse")] == ["http-reuse safe"]
    assert not [line for line in every_line if "http-server-close" in line or "httpclose" in line]


def test_nothing_needs_root_or_a_daemon(config: dict[str, list[str]]) -> None:
    global_ = config["global"]
    needs_root = {"daemon", "user", "group", "chroot", "uid", "gid"}
    assert not [line for line in global_ if line.split()[0] in needs_root]
    # A socket file would need a writable directory in a read-only container.
    assert not [line for line in global_ if line.startswith("stats socket")]
    assert "log stdout format raw local0 info" in global_
    binds = [line for lines in config.values() for line in lines if line.startswith("bind ")]
    assert binds == ["bind :8080", "bind :8404"]


# -- 3. the real thing, on Docker -----------------------------------------------------------

# A stand-in replica: HTTP on 8080 answering its own host name, admin on 9090 with /readyz
# answering 503 once /tmp/unready exists. HTTP_OFF=1 leaves 8080 unbound while /readyz still
# says 200, the case a load balancer that retries would hide.
REPLICA = r"""
import http.server, os, socket, threading
NAME = socket.gethostname().encode()
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(NAME)))
        self.end_headers(); self.wfile.write(NAME)
    def log_message(self, *args): pass
class Admin(App):
    def do_GET(self):
        ok = self.path != "/readyz" or not os.path.exists("/tmp/unready")
        self.send_response(200 if ok else 503); self.send_header("Content-Length", "0")
        self.end_headers()
servers = [http.server.ThreadingHTTPServer(("", 9090), Admin)]
if os.environ.get("HTTP_OFF") != "1":
    servers.append(http.server.ThreadingHTTPServer(("", 8080), App))
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""

NO_ENGINE = "no Docker engine answers: run `bash docker/engine.sh` or point DOCKER_HOST at one"


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Docker client with both images present; skipped locally without them, fails in CI."""
    docker = pytest.importorskip("docker")
    try:
        c = docker.from_env(timeout=60)
        c.ping()
    except Exception as exc:
        _skip_or_fail(f"{NO_ENGINE} ({exc})")
    for image in (LB_IMAGE, REPLICA_IMAGE):
        try:
            c.images.get(image)
        except docker.errors.ImageNotFound:
            _skip_or_fail(f"{image} is not built: run `bash docker/build.sh`")
    yield c
    c.close()


class Lab:
    """A private network with HAProxy and stand-in replicas; everything removed at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tag = f"graceful-lbtest-{uuid.uuid4().hex[:8]}"
        self.network = client.networks.create(
            self.tag, driver="bridge", labels={"graceful": "test"}
        )
        self.containers: list[Any] = []

    def _run(self, image: str, **kwargs: Any) -> Any:
        kwargs.setdefault("network", self.network.name)
        container = self.client.containers.run(
            image,
            detach=True,
            labels={"graceful": "test"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            **kwargs,
        )
        self.containers.append(container)
        return container

    def start_lb(self) -> tuple[str, str]:
        """Start HAProxy; return the base URLs of its app and observation ports on 127.0.0.1."""
        lb = self._run(
            LB_IMAGE,
            name=f"{self.tag}-lb",
            environment={"LB_BACKEND": f"{self.tag}-app", "LB_SLOTS": "4"},
            volumes={str(CONFIG): {"bind": LB_CONFIG_PATH, "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", None), "8404/tcp": ("127.0.0.1", None)},
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            lb.reload()
            ports = lb.attrs["NetworkSettings"]["Ports"] or {}
            if lb.status != "running":
                raise AssertionError(f"HAProxy exited:\n{lb.logs().decode(errors='replace')}")
            if ports.get("8080/tcp") and ports.get("8404/tcp"):
                app, obs = ports["8080/tcp"][0]["HostPort"], ports["8404/tcp"][0]["HostPort"]
                return f"http://127.0.0.1:{app}", f"http://127.0.0.1:{obs}"
            assert time.monotonic() < deadline, "HAProxy's ports were never published"
            time.sleep(0.1)

    def start_replica(self, name: str, *, http: bool = True) -> Any:
        """Start a replica and add it to the LB's alias once its /readyz answers 200.

        HAProxy 2.6 puts a newly resolved address UP before its first check has run, so a
        replica that joined the alias while still starting would get traffic it cannot serve.
        Like an EndpointSlice, the alias only ever gets ready replicas: the replica starts on
        the default bridge with its admin port published on 127.0.0.1, and joins the private
        network once ready.
        """
        container = self._run(
            REPLICA_IMAGE,
            name=f"{self.tag}-{name}",
            hostname=name,
            command=["python3", "-c", REPLICA],
            environment={"HTTP_OFF": "0" if http else "1"},
            user="65534:65534",
            tmpfs={"/tmp": "size=1m,uid=65534"},
            network="bridge",
            ports={"9090/tcp": ("127.0.0.1", None)},
        )

        def ready() -> bool:
            container.reload()
            if container.status == "exited":
                raise AssertionError(container.logs().decode(errors="replace"))
            published = (container.attrs["NetworkSettings"]["Ports"] or {}).get("9090/tcp")
            if not published:
                return False
            try:
                url = f"http://127.0.0.1:{published[0]['HostPort']}/readyz"
                return httpx.get(url, timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, f"replica {name} ready")
        self.network.connect(container, aliases=[f"{self.tag}-app"])
        self.warm(container)
        return container

    def warm(self, container: Any) -> None:
        """Make the LB's kernel learn the replica's MAC address right away.

        Docker publishes the alias in DNS before the new interface answers ARP. When HAProxy
        resolves the alias in that gap, its first ARP request is lost and, until the kernel
        retries a second later, connections to the replica hang while HAProxy already counts
        it UP. One connection from the replica to the LB carries an ARP request that the
        LB's kernel learns from, which closes the gap at once.
        """
        lb = self.containers[0]
        lb.reload()
        lb_ip = lb.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]
        code = f"import socket; socket.create_connection(({lb_ip!r}, 8404), 2).close()"
        result = container.exec_run(["python3", "-c", code])
        assert result.exit_code == 0, result.output

    def close(self) -> None:
        for container in self.containers:
            try:
                container.remove(force=True, v=True)
            except Exception:
                pass
        self.network.remove()


@pytest.fixture
def lab(client: Any) -> Iterator[Lab]:
    lab = Lab(client)
    try:
        yield lab
    finally:
        lab.close()


def replica_states(http: httpx.Client, observe: str) -> dict[str, str]:
    """Slot name -> HAProxy's status for every slot that holds an address."""
    text = http.get(f"{observe}/stats;csv").raise_for_status().text
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: row["status"]
        for row in rows
        if row["pxname"] == "replicas" and row["svname"].startswith("replica") and row["addr"]
    }


def wait_until(
    check: Callable[[], bool], what: str, describe: Callable[[], object] = lambda: None
) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}; last state: {describe()}")
        time.sleep(0.1)


def up_count(http: httpx.Client, observe: str) -> int:
    return sum(status == "UP" for status in replica_states(http, observe).values())


def send(http: httpx.Client, app: str, n: int) -> Counter[str]:
    """n requests through the LB: who answered ("503" for HAProxy's own refusals)."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        response = http.get(f"{app}/")
        seen[response.text if response.status_code == 200 else str(response.status_code)] += 1
    return seen


@pytest.mark.docker
@pytest.mark.slow
def test_lb_follows_readiness_and_retries_nothing(lab: Lab) -> None:
    """The three promises the rolling-restart scenario builds on.

    1. Replicas sharing the network alias are found by DNS and put in rotation.
    2. A replica whose /readyz fails leaves the rotation; the others take every request.
    3. A replica that refuses connections while /readyz says 200 costs the client real errors:
       HAProxy answers 503 and does not try another replica.

    Result: discovery without reloads, removal on readiness, and failures that stay visible.
    """
    app, observe = lab.start_lb()
    a = lab.start_replica("a")
    lab.start_replica("b")
    with httpx.Client(timeout=10.0) as http:
        state = lambda: replica_states(http, observe)  # noqa: E731
        wait_until(lambda: up_count(http, observe) == 2, "two replicas UP", state)
        assert set(send(http, app, 20)) == {"a", "b"}

        assert a.exec_run(["touch", "/tmp/unready"]).exit_code == 0
        wait_until(lambda: up_count(http, observe) == 1, "replica a taken out", state)
        assert send(http, app, 20) == Counter({"b": 20})

        lab.start_replica("c", http=False)
        wait_until(lambda: up_count(http, observe) == 2, "replica c UP", state)
        seen = send(http, app, 20)
        # Round robin over b and c: c's requests fail and nobody retries them on b.
        assert seen["503"] >= 5, seen
        assert seen["b"] >= 5, seen
        assert set(seen) == {"b", "503"}, seen

"""The load balancer and the replicas of ``rolling-restart``: HAProxy on a private network.

N replicas of the image run on a private Docker network behind HAProxy (the image
``graceful-lb:bookworm``, configured by the ``haproxy.cfg`` shipped next to this module, the
one source of that file: ``docker/lb.Dockerfile`` copies it too). The load balancer plays the
part of a Kubernetes Service: it routes only to replicas whose ``/readyz`` answers 200 and it
retries nothing. :class:`Cluster` creates the network, starts the load balancer and the
replicas (through the scenario's :class:`~graceful.harness.context.Context`, which removes
them all), reads HAProxy's view of them from ``/stats;csv``, and replaces one replica by a new
one the way a Deployment does (``maxSurge 1, maxUnavailable 0``).

Traffic from the host goes only to the load balancer's ports published on 127.0.0.1; the
replicas' addresses on the private network are read (to match load-balancer slots to
containers), never connected to. ``docs/rolling-restart.md`` explains every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib.resources
import io
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from graceful.harness.container import Container, ContainerError, StopResult
from graceful.harness.context import HANG_GUARD_S, Context, Service

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "LB_CONFIG_PATH",
    "LB_IMAGE",
    "Cluster",
    "Detection",
    "Replacement",
    "Replica",
    "lb_config",
    "lb_config_file",
    "lb_detection",
    "parse_httplog",
]

LB_IMAGE = "graceful-lb:bookworm"
LB_CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
_LB_APP_PORT = 8080
_LB_OBSERVE_PORT = 8404
_BACKEND = "replicas"
_POLL_S = 0.05


def lb_config() -> str:
    """The HAProxy configuration the scenario runs with (shipped as package data)."""
    return _config_resource().read_text()


def lb_config_file() -> contextlib.AbstractContextManager[Path]:
    """The configuration as a real file to bind-mount, also when the package is installed
    zipped (a context manager: a temporary copy is removed on exit)."""
    return importlib.resources.as_file(_config_resource())


def _config_resource() -> Traversable:
    return importlib.resources.files(__package__).joinpath("haproxy.cfg")


@dataclass(frozen=True, slots=True)
class Detection:
    """How fast the load balancer notices a replica whose ``/readyz`` went 503.

    Attributes:
        inter_s: seconds between two health checks of a replica.
        fall: failed checks in a row that mark a replica ``DOWN``.
        check_timeout_s: the longest one check may take.

    .. versionadded:: 0.1
    """

    inter_s: float
    fall: int
    check_timeout_s: float

    @property
    def seconds(self) -> float:
        """The longest the load balancer may keep routing to a replica that went unready:
        ``inter x fall`` plus the time of the last check."""
        return self.inter_s * self.fall + self.check_timeout_s

    def describe(self) -> str:
        """The arithmetic in words, e.g. ``inter 500 ms x fall 1 + timeout check 1 s``."""
        return (
            f"inter {self.inter_s * 1000:.0f} ms x fall {self.fall} + timeout check "
            f"{self.check_timeout_s:g} s = {self.seconds:g} s"
        )


def lb_detection(config: str) -> Detection:
    """Read the health-check timing from an HAProxy configuration.

    Raises:
        ValueError: the configuration sets no ``inter``, ``fall`` or ``timeout check``.
    """

    def setting(pattern: str) -> str:
        match = re.search(pattern, config, re.MULTILINE)
        if match is None:
            raise ValueError(f"the load balancer's configuration has no {pattern!r}")
        return match.group(1)

    return Detection(
        inter_s=_seconds(setting(r"^\s*default-server\b.*\binter\s+(\S+)")),
        fall=int(setting(r"^\s*default-server\b.*\bfall\s+(\d+)")),
        check_timeout_s=_seconds(setting(r"^\s*timeout\s+check\s+(\S+)")),
    )


def _seconds(text: str) -> float:
    """HAProxy's time format: ``500ms``, ``1s``, ``2m``; a bare number is milliseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", text)
    if match is None:
        raise ValueError(f"not an HAProxy time: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return float(match.group(1)) * scale[match.group(2) or "ms"]


@dataclass(slots=True)
class Replica:
    """One replica: its container, its address on the private network (read, never
    connected to from the host) and the propagation delay it was started with."""

    service: Service
    address: str
    delay: float

    @property
    def name(self) -> str:
        return self.service.container.name


@dataclass(frozen=True, slots=True)
class Replacement:
    """One step of a roll: a new replica in, an old one stopped.

    Attributes:
        old: the stopped replica's container name.
        delay: the stopped replica's ``GRACEFUL_DELAY``.
        joined: monotonic time the new replica joined the load balancer's alias.
        stop_sent: monotonic time ``docker stop`` was sent to the old one.
        stop: how the old one ended.
        down_before_exit: the load balancer showed the old one not ``UP`` before it exited
            (None when the engine did not record the exit time).
        logs: the old replica's output.
    """

    old: str
    delay: float
    joined: float
    stop_sent: float
    stop: StopResult
    down_before_exit: bool | None
    logs: str


class Cluster:
    """The private network, the load balancer and the replicas of one scenario run.

    Everything is labelled like the harness's other objects (so ``graceful harness clean`` and
    the engine's own clean-up find it), tracked by the scenario's context, and removed by
    :meth:`close` (or by the context's own clean-up if :meth:`close` never runs).
    """

    def __init__(self, ctx: Context, *, lb_image: str, slots: int) -> None:
        self.ctx = ctx
        self.engine = ctx.engine
        self.lb_image = lb_image
        self.slots = slots
        self.alias = f"graceful-harness-{self.engine.run_id}-app"
        self.network: Any = None
        self.lb: Container | None = None
        self.lb_address = ""
        self.app_port = 0
        self.observe_port = 0
        self._names = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=2.0, trust_env=False)

    # --- set-up and clean-up -----------------------------------------------------------------

    async def open(self, config: Path) -> None:
        """Create the network and start the load balancer with ``config`` mounted read-only.

        Raises:
            ContainerError: the load-balancer image is missing or HAProxy did not start.
        """
        await asyncio.to_thread(self._open, config)
        await self._wait_lb()

    def _open(self, config: Path) -> None:
        import docker.errors

        client = self.engine.client
        try:
            client.images.get(self.lb_image)
        except docker.errors.ImageNotFound as exc:
            raise ContainerError(
                f"no load-balancer image {self.lb_image!r} on this engine (nothing is pulled): "
                "build it with `bash docker/build.sh` (HAProxy from Debian 12, "
                "docker/lb.Dockerfile), or pass one with HAProxy 2.6 or later"
            ) from exc
        self.network = client.networks.create(
            f"graceful-harness-{self.engine.run_id}-net{next(self._names)}",
            driver="bridge",
            labels=dict(self.engine.labels),
        )
        self.ctx.track_network(str(self.network.id))
        self.lb = self.engine.run(
            self.lb_image,
            name=f"graceful-harness-{self.engine.run_id}-lb{next(self._names)}",
            network=self.network.name,
            env={
                "LB_BACKEND": self.alias,
                "LB_SLOTS": str(self.slots),
                "LB_APP_PORT": str(self.ctx.workload.port),
                "LB_ADMIN_PORT": str(self.ctx.workload.admin_port),
            },
            binds={str(config): LB_CONFIG_PATH},
            ports=[_LB_APP_PORT, _LB_OBSERVE_PORT],
            hardened=True,
        )
        self.ctx.track(self.lb)

    async def _wait_lb(self) -> None:
        lb = self.lb
        assert lb is not None
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            await asyncio.to_thread(lb.reload)
            if not lb.attrs["State"].get("Running"):
                logs = await asyncio.to_thread(lb.logs)
                raise ContainerError(f"the load balancer exited; its output:\n{logs.strip()}")
            with contextlib.suppress(ContainerError, httpx.HTTPError):
                self.app_port = lb.host_port(_LB_APP_PORT)
                self.observe_port = lb.host_port(_LB_OBSERVE_PORT)
                await self.stats()
                self.lb_address = self._address(lb)
                return
            if time.monotonic() > deadline:
                raise ContainerError("the load balancer never answered on its published ports")
            await asyncio.sleep(_POLL_S)

    def _address(self, container: Container) -> str:
        networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        return str((networks.get(self.network.name) or {}).get("IPAddress") or "")

    async def close(self) -> None:
        """Remove the replicas, the load balancer, their volumes and the network."""
        await self._http.aclose()
        await self.ctx.close()

    # --- replicas ------------------------------------------------------------------------------

    async def start_replica(self, delay: float) -> Replica:
        """Start a replica and add it to the load balancer's alias once it is ready.

        HAProxy 2.6 puts a newly resolved address ``UP`` before its first check, so a replica
        that joined the alias while starting would get requests it cannot serve yet. Like an
        EndpointSlice, the alias only gets ready replicas: the replica starts on the default
        bridge with its ports published on 127.0.0.1, its ``/readyz`` is polled there, and
        only then is it connected to the private network.
        """
        ctx, w = self.ctx, self.ctx.workload
        service = await ctx.start(
            ready=False,
            # After the user's environment: the delay is what this scenario varies.
            env={"GRACEFUL_DELAY": f"{delay:g}"},
            name=f"graceful-harness-{self.engine.run_id}-r{next(self._names)}",
            what=f"a replica (GRACEFUL_DELAY={delay:g})",
        )
        container = service.container
        await ctx.wait_ready(service)
        await asyncio.to_thread(self.network.connect, container.id, aliases=[self.alias])
        await asyncio.to_thread(container.reload)
        address = self._address(container)
        await asyncio.to_thread(self._warm, container)
        return Replica(service=service, address=f"{address}:{w.port}", delay=delay)

    def _warm(self, container: Container) -> None:
        """Have the replica open one connection to the load balancer.

        Docker publishes the alias in DNS a little before the new interface answers ARP.
        When HAProxy resolves the alias in that gap, connections to the replica hang until the
        kernel retries ARP a second later, while HAProxy already counts the replica ``UP``.
        One connection from the replica carries an ARP request the load balancer's kernel
        learns the replica's address from. The replica's own ``python3`` makes it when the
        image has one; otherwise ``bash`` in a container of the load-balancer image that
        shares the replica's network namespace does.
        """
        import docker.errors

        target = (self.lb_address, _LB_OBSERVE_PORT)
        code = f"import socket; socket.create_connection({target!r}, 2).close()"
        with contextlib.suppress(docker.errors.APIError):
            if container.raw.exec_run(["python3", "-c", code]).exit_code == 0:
                return
        sidecar = self.engine.run(
            self.lb_image,
            entrypoint=["bash", "-c", f"exec 3<>/dev/tcp/{target[0]}/{target[1]}"],
            network_mode=f"container:{container.id}",
            healthcheck=False,
        )
        self.ctx.track(sidecar)
        sidecar.wait(10.0)

    # --- the load balancer's view ------------------------------------------------------------

    async def stats(self) -> dict[str, str]:
        """Replica address (``IP:port``) → HAProxy's status (``UP``, ``DOWN``, ...), for every
        slot that holds an address, from ``/stats;csv`` on the published observation port."""
        url = f"http://127.0.0.1:{self.observe_port}/stats;csv"
        response = await self._http.get(url)
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {
            row["addr"]: row["status"]
            for row in rows
            if row.get("pxname") == _BACKEND and row.get("addr") and row.get("svname") != "BACKEND"
        }

    async def wait_status(self, replica: Replica, *, up: bool, what: str) -> None:
        """Wait until the load balancer shows ``replica`` ``UP`` (or no longer ``UP``).

        Raises:
            ContainerError: it did not happen within the hang guard.
        """
        deadline = time.monotonic() + HANG_GUARD_S
        last: dict[str, str] = {}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                last = await self.stats()
                if (last.get(replica.address) == "UP") is up:
                    return
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"{what}: the load balancer never showed {replica.name} "
                    f"({replica.address}) {'UP' if up else 'out of rotation'} within "
                    f"{HANG_GUARD_S:g} s; its slots: {last}"
                )
            await asyncio.sleep(_POLL_S)

    async def replace(self, old: Replica, delay: float) -> tuple[Replica, Replacement]:
        """Start a new replica, wait until it is ``UP``, then ``docker stop`` ``old`` and wait
        until it has exited and the load balancer routes nothing more to it."""
        new = await self.start_replica(delay)
        joined = time.monotonic()
        await self.wait_status(new, up=True, what="a new replica")
        self.ctx.step(f"docker stop -t {self.ctx.stop_timeout} {old.name}")
        stop_sent, stop_sent_wall = time.monotonic(), time.time()
        stop_call = asyncio.create_task(
            asyncio.to_thread(old.service.container.stop, self.ctx.stop_timeout)
        )
        down_at: float | None = None
        while not stop_call.done():
            with contextlib.suppress(httpx.HTTPError):
                status = (await self.stats()).get(old.address)
                if down_at is None and status != "UP":
                    down_at = time.monotonic()
            await asyncio.wait([stop_call], timeout=_POLL_S)
        stop = stop_call.result()
        down_before_exit = None
        if stop.finished_at is not None:
            exited = stop_sent + max(stop.finished_at - stop_sent_wall, 0.0)
            down_before_exit = down_at is not None and down_at <= exited
        # An old replica that exited before the check noticed stays UP in the LB until a
        # check of its vanished address fails: wait for that, so the next step starts clean.
        await self.wait_status(old, up=False, what="a stopped replica")
        logs = await asyncio.to_thread(old.service.container.logs)
        return new, Replacement(
            old=old.name,
            delay=old.delay,
            joined=joined,
            stop_sent=stop_sent,
            stop=stop,
            down_before_exit=down_before_exit,
            logs=logs,
        )

    async def lb_logs(self) -> str:
        """The load balancer's output (one ``httplog`` line per request)."""
        return await asyncio.to_thread(self.lb.logs) if self.lb is not None else ""


# One `option httplog` line of the `app` frontend (the load, not the harness's stats reads):
# client [accept date] frontend backend/server timers status bytes - - state ...
_HTTPLOG = re.compile(
    r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] app \S+ \S+ (-?\d+) \S+ \S+ \S+ (\S{4}) "
)


def parse_httplog(text: str) -> Iterator[tuple[float, str, str]]:
    """(accept time as Unix time, status, termination state) for each ``httplog`` line.

    HAProxy stamps lines with the container's local time, which is UTC in the load-balancer
    image (no time zone is set there)."""
    for match in _HTTPLOG.finditer(text):
        try:
            when = datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S.%f").replace(tzinfo=UTC)
        except ValueError:
            continue
        yield when.timestamp(), match.group(2), match.group(3)

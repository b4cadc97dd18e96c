"""The ``rolling-restart`` scenario: replace every replica behind a load balancer under load.

N replicas of the image run on a private Docker network behind HAProxy (the image
``graceful-lb:bookworm``, configured by the ``haproxy.cfg`` shipped next to this module). The
load balancer plays the part of a Kubernetes Service: it routes only to replicas whose
``/readyz`` answers 200 and it retries nothing, so every request a replica drops during its
stop reaches the client's ledger. The roll is Kubernetes' ``maxSurge 1, maxUnavailable 0``:
start a new replica, wait until the load balancer has it ``UP``, ``docker stop`` an old one and
wait for its exit; again for every replica, ``rolls`` times over.

The scenario passes when no request of those rolls failed and every stopped replica exited 0.
Before them it runs one control roll whose old replicas have ``GRACEFUL_DELAY=0``: they close
their listeners while the load balancer still routes to them, and the requests that fail then
are reported beside the judged rolls' (as notes), to show what the propagation delay buys.

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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx

from graceful.harness.engine import Container, ContainerError, StopResult
from graceful.harness.load import Ledger, LoadClient, Record, describe_failures
from graceful.harness.report import ScenarioResult
from graceful.harness.scenarios import (
    Context,
    Findings,
    Service,
    describe_exit,
    judge_report_events,
    judge_traceback,
)

__all__ = ["LB_IMAGE", "Detection", "RollingRestart", "lb_config", "lb_detection"]

LB_IMAGE = "graceful-lb:bookworm"
LB_CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
_LB_APP_PORT = 8080
_LB_OBSERVE_PORT = 8404
_BACKEND = "replicas"
_HANG_GUARD_S = 30.0
_POLL_S = 0.05
# HAProxy's `hold obsolete`: an exited replica's address keeps its slot this long.
_OBSOLETE_HOLD_S = 1.0


def lb_config() -> str:
    """The HAProxy configuration the scenario runs with (shipped as package data)."""
    return importlib.resources.files(__package__).joinpath("haproxy.cfg").read_text()


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


@dataclass(slots=True)
class Phase:
    """A run of replacements with one delay, and the requests sent while it ran."""

    delay: float
    control: bool
    started: float
    started_wall: float
    # Wall-clock bounds of the requests counted with this roll (the load balancer's log is
    # stamped with the wall clock); set once every roll has run.
    window: tuple[float, float] = (0.0, 0.0)
    replacements: list[Replacement] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)


class Cluster:
    """The private network, the load balancer and the replicas of one scenario run.

    Everything is labelled like the harness's other objects (so ``graceful harness clean`` and
    the engine's own clean-up find it) and removed by :meth:`close`.
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
        self._containers: list[Container] = []
        self._volumes: list[str] = []
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
        raw = client.containers.run(
            self.lb_image,
            detach=True,
            name=f"graceful-harness-{self.engine.run_id}-lb{next(self._names)}",
            labels=dict(self.engine.labels),
            network=self.network.name,
            environment={
                "LB_BACKEND": self.alias,
                "LB_SLOTS": str(self.slots),
                "LB_APP_PORT": str(self.ctx.workload.port),
                "LB_ADMIN_PORT": str(self.ctx.workload.admin_port),
            },
            volumes={str(config): {"bind": LB_CONFIG_PATH, "mode": "ro"}},
            ports={
                f"{_LB_APP_PORT}/tcp": ("127.0.0.1", None),
                f"{_LB_OBSERVE_PORT}/tcp": ("127.0.0.1", None),
            },
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
        )
        self.lb = self._adopt(raw)

    def _adopt(self, raw: Any) -> Container:
        container = Container(self.engine, raw)
        self._containers.append(container)
        self.ctx.track(container)  # removed with the scenario even if close() never runs
        return container

    async def _wait_lb(self) -> None:
        lb = self.lb
        assert lb is not None
        deadline = time.monotonic() + _HANG_GUARD_S
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
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        import docker.errors

        api = self.engine.client.api
        for container in self._containers:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(container.id, force=True, v=True)
        for volume in self._volumes:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_volume(volume, force=True)
        if self.network is not None:
            with contextlib.suppress(docker.errors.APIError):
                self.network.remove()

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
        env = {
            "GRACEFUL_STOP_TIMEOUT": str(ctx.stop_timeout),
            "PORT": str(w.port),
            "ADMIN_PORT": str(w.admin_port),
            **dict(ctx.settings.env),
            # After the user's environment: the delay is what this scenario varies.
            "GRACEFUL_DELAY": f"{delay:g}",
        }
        volume, volumes = "", None
        if w.volume_path:
            volume = await asyncio.to_thread(self.engine.volume)
            self._volumes.append(volume)
            volumes = {volume: w.volume_path}
        ctx.step(f"starting a replica (GRACEFUL_DELAY={delay:g})")
        container = await asyncio.to_thread(
            self.engine.run,
            ctx.image.ref,
            ports=[w.port, w.admin_port],
            env=env,
            volumes=volumes,
            init=ctx.settings.init,
            name=f"graceful-harness-{self.engine.run_id}-r{next(self._names)}",
        )
        self._containers.append(container)
        ctx.track(container)
        service = Service(
            container=container,
            volume=volume,
            main_port=container.host_port(w.port),
            admin_port=container.host_port(w.admin_port),
        )
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
        self._containers.append(sidecar)
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
        deadline = time.monotonic() + _HANG_GUARD_S
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
                    f"{_HANG_GUARD_S:g} s; its slots: {last}"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RollingRestart:
    """Replace every replica behind a load balancer under steady load, ``rolls`` times over:
    no request may fail, and every stopped replica must exit 0.

    Needs the load-balancer image (``graceful-lb:bookworm``, built by ``docker/build.sh``),
    an admin port with readiness, and an image that keeps serving for a propagation delay
    after ``/readyz`` turns 503 (graceful's ``GRACEFUL_DELAY``, which the scenario sets). That
    is why it runs only when named (``--scenario rolling-restart``).

    Args:
        replicas: replicas behind the load balancer.
        rolls: full rolls judged (each replaces every replica once).
        delay: ``GRACEFUL_DELAY`` of the judged replicas; must exceed the load balancer's
            detection time (``inter x fall + timeout check`` of its configuration, 1.5 s).
        control: first roll once with ``GRACEFUL_DELAY=0`` and report the difference (notes
            only: the control run never fails the scenario).
        concurrency: requests in flight at once through the load balancer.
        work_ms: the work each request asks for.
        lb_image: the HAProxy image.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "rolling-restart"
    summary: ClassVar[str] = (
        "opt-in: replace N replicas one at a time behind HAProxy under load (needs "
        "graceful-lb:bookworm): no request fails, every replica exits 0; also shows "
        "GRACEFUL_DELAY=0 losing requests"
    )
    replicas: int = 3
    rolls: int = 1
    delay: float = 2.0
    control: bool = True
    concurrency: int = 8
    work_ms: int = 20
    lb_image: str = LB_IMAGE

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.rolls < 1 or self.concurrency < 1:
            raise ValueError("replicas, rolls and concurrency must be at least 1")
        if self.delay < 0 or self.work_ms < 0:
            raise ValueError("delay and work_ms must not be negative")

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        if not ctx.workload.has_admin:
            f.problem(
                "not run: a load balancer routes by readiness, and the workload has no admin "
                "port with a readiness path (--admin-port, --ready-path)"
            )
            return f.result(self.name)
        detection = lb_detection(lb_config())
        # Slots for the surge replica and for an exited one's address, held for a second.
        cluster = Cluster(ctx, lb_image=self.lb_image, slots=self.replicas + 2)
        resource = importlib.resources.files(__package__).joinpath("haproxy.cfg")
        try:
            # A real file to bind-mount, also when the package is installed zipped.
            with importlib.resources.as_file(resource) as config:
                await cluster.open(config)
                phases = await self._roll(ctx, cluster)
            lb_logs = await cluster.lb_logs()
        finally:
            await cluster.close()
        judged = [p for p in phases if not p.control]
        control = next((p for p in phases if p.control), None)
        self._judge(f, ctx, judged, control, detection, lb_logs)
        main = Ledger([r for p in judged for r in p.ledger.records])
        stops = [r.stop for p in judged for r in p.replacements]
        return f.result(self.name, stop=_headline(stops), ledger=main)

    async def _roll(self, ctx: Context, cluster: Cluster) -> list[Phase]:
        """Start the replicas, put load on the load balancer, run the control roll and the
        judged rolls; return each roll with the requests sent while it ran."""
        # The control roll stops replicas started with no delay; every new one gets the delay.
        old_delays = ([0.0] if self.control else []) + [self.delay] * self.rolls
        ctx.step(f"starting {self.replicas} replicas")
        replicas = list(
            await asyncio.gather(
                *(cluster.start_replica(old_delays[0]) for _ in range(self.replicas))
            )
        )
        for replica in replicas:
            await cluster.wait_status(replica, up=True, what="an initial replica")
        ledger = Ledger()
        stop_load = asyncio.Event()
        # Hang guard only: a replacement normally takes a few seconds.
        bound = (
            len(old_delays)
            * self.replicas
            * (ctx.settings.startup_timeout + ctx.stop_timeout + _HANG_GUARD_S)
        )
        phases: list[Phase] = []
        async with LoadClient(
            cluster.app_port,
            workload=ctx.workload,
            ledger=ledger,
            connections=self.concurrency,
            timeout=ctx.stop_timeout + _HANG_GUARD_S,
        ) as client:
            load = asyncio.create_task(self._load(client, stop_load, bound))
            try:
                for number, old_delay in enumerate(old_delays):
                    is_control = self.control and number == 0
                    phase = Phase(
                        delay=old_delay,
                        control=is_control,
                        started=time.monotonic(),
                        started_wall=time.time(),
                    )
                    what = "control roll" if is_control else f"roll {number + 1 - self.control}"
                    for index in range(self.replicas):
                        ctx.step(
                            f"{what} (GRACEFUL_DELAY={old_delay:g}): replica {index + 1} of "
                            f"{self.replicas}"
                        )
                        new, done = await cluster.replace(replicas[0], self.delay)
                        replicas = [*replicas[1:], new]
                        phase.replacements.append(done)
                    phases.append(phase)
            finally:
                stop_load.set()
                _, pending = await asyncio.wait([load], timeout=_HANG_GUARD_S)
                for task in pending:
                    task.cancel()
                await asyncio.gather(load, return_exceptions=True)
        if not load.cancelled() and load.exception() is not None:
            # The load itself broke (not a failed request: those are records): say so
            # rather than judge a roll nobody sent requests through.
            raise RuntimeError("the load client failed") from load.exception()
        # Each request belongs to the roll it was sent in; the warm-up before the first roll
        # and the last requests after the last one count with them.
        inf = float("inf")
        for i, phase in enumerate(phases):
            last = i + 1 == len(phases)
            start, end = (phase.started if i else -inf), (inf if last else phases[i + 1].started)
            phase.ledger = Ledger([r for r in ledger.records if start <= r.sent < end])
            phase.window = (
                phase.started_wall if i else -inf,
                inf if last else phases[i + 1].started_wall,
            )
        return phases

    async def _load(self, client: LoadClient, stop: asyncio.Event, seconds: float) -> None:
        """``concurrency`` workers sending work requests until ``stop``, bounded in count and
        time. Unlike :meth:`LoadClient.steady`, a worker keeps going after a failure: the
        load balancer stays up, and a failed request is what the scenario counts."""
        deadline = time.monotonic() + seconds
        budget = itertools.count()

        async def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                if next(budget) >= _MAX_REQUESTS:
                    return
                if not (await client.work(self.work_ms)).ok:
                    await asyncio.sleep(0.01)  # a client backs off a little, it does not spin

        async with asyncio.TaskGroup() as group:
            for _ in range(self.concurrency):
                group.create_task(worker())

    def _judge(
        self,
        f: Findings,
        ctx: Context,
        judged: Sequence[Phase],
        control: Phase | None,
        detection: Detection,
        lb_logs: str,
    ) -> None:
        records = [r for p in judged for r in p.ledger.records]
        replacements = [r for p in judged for r in p.replacements]
        failed = [r for r in records if not r.ok]
        if not records:
            f.problem("no request was sent through the load balancer during the judged rolls")
        rolls = f"{len(judged)} roll{'s' * (len(judged) != 1)} ({len(replacements)} replacements"
        rolls += f" of {self.replicas} replicas, GRACEFUL_DELAY={self.delay:g} s)"
        if failed:
            stopping = sum(1 for r in failed if _while_stopping(r, replacements, detection))
            f.problem(
                f"{len(failed)} of {len(records)} requests through the load balancer failed "
                f"during {rolls}: {describe_failures(failed)}{_lb_states(lb_logs, judged)}; "
                f"{stopping} of them were sent while an old replica was stopping"
                + _cause(self.delay, detection, stopping, len(failed))
            )
        else:
            f.note(
                f"all {len(records)} requests through the load balancer were answered during "
                f"{rolls}"
            )
        _judge_exits(f, replacements, problem=True)
        for done in replacements:
            judge_report_events(f, done.logs, ctx.workload, strict=False)
            judge_traceback(f, done.logs)
        # One finding per kind of problem, not one per replica.
        f.problems[:] = dict.fromkeys(f.problems)
        if self.delay > detection.seconds:
            f.note(
                f"GRACEFUL_DELAY={self.delay:g} s outlasts the load balancer's detection time "
                f"({detection.describe()})"
            )
        else:
            f.note(
                f"GRACEFUL_DELAY={self.delay:g} s does not outlast the load balancer's detection "
                f"time ({detection.describe()}): requests routed before it noticed can fail"
            )
        if control is not None:
            self._judge_control(f, control, len(failed), len(records), len(replacements), lb_logs)

    def _judge_control(
        self,
        f: Findings,
        control: Phase,
        failed: int,
        sent: int,
        replacements: int,
        lb_logs: str,
    ) -> None:
        """The control roll only ever adds notes: it demonstrates, it does not judge."""
        records = control.ledger.records
        lost = [r for r in records if not r.ok]
        steps = len(control.replacements)
        judged = f"with GRACEFUL_DELAY={self.delay:g} s: {failed} of {sent} failed during "
        judged += f"{replacements} replacements"
        if lost:
            f.note(
                f"with GRACEFUL_DELAY=0: {len(lost)} of {len(records)} requests failed during "
                f"{steps} replacements ({describe_failures(lost)}"
                f"{_lb_states(lb_logs, [control], inner=True)}); {judged}"
            )
        else:
            f.note(
                f"with GRACEFUL_DELAY=0 no request failed either (0 of {len(records)} during "
                f"{steps} replacements), so this run could not show what the delay buys: the "
                "load balancer noticed each stop before the listener closed, or the load was "
                f"too light; {judged}"
            )
        _judge_exits(f, control.replacements, problem=False, prefix="with GRACEFUL_DELAY=0: ")


_MAX_REQUESTS = 250_000


def _judge_exits(
    f: Findings, replacements: Sequence[Replacement], *, problem: bool, prefix: str = ""
) -> None:
    """Every stopped replica must exit 0; say how long the stops took and whether the load
    balancer had taken each old replica out of rotation before it exited."""
    if not replacements:
        return
    bad = [r for r in replacements if r.stop.exit_code != 0]
    by_code: dict[int, list[Replacement]] = {}
    for r in bad:
        by_code.setdefault(r.stop.exit_code, []).append(r)
    for code, group in by_code.items():
        text = (
            f"{prefix}{len(group)} of {len(replacements)} stopped replicas exited {code} "
            f"({group[0].old}: {describe_exit(code, group[0].stop)})"
        )
        if problem:
            f.problem(text)
        else:
            f.note(text)
    seconds = [r.stop.seconds for r in replacements]
    exits = "exited 0" if not bad else f"{len(replacements) - len(bad)} exited 0"
    known = [r.down_before_exit for r in replacements if r.down_before_exit is not None]
    out = ""
    if known:
        out = (
            f"; the load balancer had taken {sum(known)} of {len(known)} out of rotation before "
            "they exited"
        )
    f.note(
        f"{prefix}{'all ' if not bad else ''}{len(replacements)} stopped replicas: {exits}, "
        f"{min(seconds):.2f}-{max(seconds):.2f} s from docker stop to exit{out}"
    )


def _headline(stops: Sequence[StopResult]) -> StopResult | None:
    """The stop the report's row shows: the first that did not exit 0, else the slowest."""
    if not stops:
        return None
    bad = [s for s in stops if s.exit_code != 0]
    return bad[0] if bad else max(stops, key=lambda s: s.seconds)


def _while_stopping(
    record: Record, replacements: Sequence[Replacement], detection: Detection
) -> bool:
    """The request was sent between a ``docker stop`` and the load balancer's last chance
    to notice that replica's exit."""
    return any(
        r.stop_sent <= record.sent <= r.stop_sent + r.stop.seconds + detection.seconds
        for r in replacements
    )


def _cause(delay: float, detection: Detection, stopping: int, failed: int) -> str:
    if stopping * 2 < failed:
        return (
            " (most came outside any stop: while a new replica joined, or from the steady "
            "state; the load balancer's log says which replica broke them)"
        )
    if delay <= detection.seconds:
        return (
            f" (GRACEFUL_DELAY={delay:g} s does not outlast the load balancer's detection "
            f"time, {detection.seconds:g} s)"
        )
    return (
        ": the replicas stopped serving before the load balancer took them out of rotation; "
        "does the image answer /readyz 503 at once, and keep serving through GRACEFUL_DELAY?"
    )


def _lb_states(lb_logs: str, phases: Sequence[Phase], *, inner: bool = False) -> str:
    """``; load balancer: 12 x 503 SC--`` for the failed requests the load balancer logged
    during ``phases`` (``httplog`` lines are stamped with the wall clock)."""
    counter: Counter[str] = Counter()
    for when, status, state in _httplog(lb_logs):
        if status.startswith("2"):
            continue
        if any(p.window[0] <= when < p.window[1] for p in phases):
            counter[f"{status} {state}"] += 1
    if not counter:
        return ""
    states = ", ".join(f"{n} x {what}" for what, n in counter.most_common())
    return f"{'; ' if inner else ' ('}load balancer: {states}{'' if inner else ')'}"


# One `option httplog` line of the `app` frontend (the load, not the harness's stats reads):
# client [accept date] frontend backend/server timers status bytes - - state ...
_HTTPLOG = re.compile(
    r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] app \S+ \S+ (-?\d+) \S+ \S+ \S+ (\S{4}) "
)


def _httplog(text: str) -> Iterator[tuple[float, str, str]]:
    """(accept time as Unix time, status, termination state) for each ``httplog`` line.

    HAProxy stamps lines with the container's local time, which is UTC in the load-balancer
    image (no time zone is set there)."""
    for match in _HTTPLOG.finditer(text):
        try:
            when = datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S.%f").replace(tzinfo=UTC)
        except ValueError:
            continue
        yield when.timestamp(), match.group(2), match.group(3)

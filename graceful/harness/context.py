"""What one scenario runs with: the shared settings, the containers it started, its findings.

A :class:`Context` is a scenario's only way to the engine: it starts the image under test
(:meth:`Context.start`, also for the replicas of ``rolling-restart``), stops, kills and reads
it, makes load clients for it, and removes every container, volume and network it started
when the scenario ends, through :func:`graceful.harness.engine.remove` like every other
clean-up. :class:`Findings` collects what a scenario found and turns it into its
:class:`~graceful.harness.report.ScenarioResult`, with a verdict: FAIL when a problem was
found, else INCONCLUSIVE when something could not be established, SKIPPED when the scenario
did not run, else PASS.

A context also carries the image's :class:`~graceful.harness.contract.Contract` (what the
preflight established), so a scenario only relies on what the image honours.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from graceful.harness.container import Container, ContainerError, ImageInfo, Pid1, StopResult
from graceful.harness.contract import Contract
from graceful.harness.engine import Engine, remove
from graceful.harness.load import Ledger, LoadClient, classify
from graceful.harness.report import INCONCLUSIVE, NOTE, SKIPPED, ScenarioResult, Verdict
from graceful.harness.workload import Workload

__all__ = [
    "HANG_GUARD_S",
    "Context",
    "Findings",
    "Progress",
    "Service",
    "Settings",
    "gather_bounded",
    "made",
    "not_ready_diagnosis",
]

Progress = Callable[[str], None]
T = TypeVar("T")

# Every wait of a scenario is bounded by this much beyond what it expects: a hang guard, not a
# timing claim.
HANG_GUARD_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What every scenario of a run shares.

    Args:
        stop_timeout: seconds ``docker stop`` waits before SIGKILL (``-t``); also passed to
            the service as ``GRACEFUL_STOP_TIMEOUT``.
        workload: ports and paths of the service's HTTP contract.
        env: extra environment for the service's containers.
        startup_timeout: how long a container may take to become ready.
        probe_image: image (with ``python3``) for the connection prober that shares the
            service's network namespace; by default the image under test, then
            ``graceful-base:bookworm``, then a prober on the host.
        init: run the service under Docker's init (``--init``) instead of as PID 1.

    .. versionadded:: 0.1
    """

    stop_timeout: int = 10
    workload: Workload = field(default_factory=Workload)
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = 60.0
    probe_image: str | None = None
    init: bool = False


@dataclass(slots=True)
class Service:
    """A started container of the image under test, with its host ports and volume.

    Attributes:
        container: the container.
        volume: the named volume mounted at the workload's volume path ("" for none).
        main_port: the host port (on 127.0.0.1) published for the HTTP port.
        admin_port: the host port published for the admin port, None without one.
        pid1: PID 1 as seen once the service was ready (None until then, or unknown).

    .. versionadded:: 0.1
    """

    container: Container
    volume: str
    main_port: int
    admin_port: int | None
    pid1: Pid1 | None = None


class Findings:
    """Collects problems (which fail a scenario) and notes (which do not).

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.reasons: list[str] = []
        self.notes: list[str] = []
        self._inconclusive = False

    def problem(self, text: str) -> None:
        """Add a finding that fails the scenario."""
        self.problems.append(text)

    def note(self, text: str) -> None:
        """Add an observation that does not fail the scenario."""
        self.notes.append(NOTE + text)

    def skip(self, reason: str) -> None:
        """The scenario did not run, for ``reason`` (SKIPPED unless a problem was found)."""
        self.reasons.append(SKIPPED + reason)

    def inconclusive(self, what: str) -> None:
        """What the scenario had to establish and could not (INCONCLUSIVE unless a problem
        was found)."""
        self._inconclusive = True
        self.reasons.append(INCONCLUSIVE + what)

    @property
    def verdict(self) -> Verdict:
        """FAIL on a problem, else INCONCLUSIVE, else SKIPPED, else PASS."""
        if self.problems:
            return Verdict.FAIL
        if self._inconclusive:
            return Verdict.INCONCLUSIVE
        if self.reasons:
            return Verdict.SKIPPED
        return Verdict.PASS

    def result(
        self,
        name: str,
        *,
        stop: StopResult | None = None,
        ledger: Ledger | None = None,
        lost: int = 0,
    ) -> ScenarioResult:
        """The scenario's result, with :attr:`verdict`."""
        counts = ledger.counts() if ledger is not None else None
        return ScenarioResult(
            name=name,
            verdict=self.verdict,
            exit_code=stop.exit_code if stop is not None else None,
            stop_seconds=stop.seconds if stop is not None else None,
            sent=counts.sent if counts else 0,
            ok=counts.ok if counts else 0,
            failed=counts.failed if counts else 0,
            acked=len(ledger.acked_ids()) if ledger is not None else 0,
            lost=lost,
            findings=tuple(self.problems + self.reasons + self.notes),
        )


class Context:
    """One scenario's access to the engine; removes its containers and volumes at the end.

    Args:
        engine: the connected engine.
        image: the image under test.
        settings: what the run's scenarios share.
        scenario: the scenario's name (in progress lines and item ids).
        progress: called with a short status text as the scenario advances.
        contract: what the preflight established about the image; what the settings
            promise when None.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        engine: Engine,
        image: ImageInfo,
        settings: Settings,
        *,
        scenario: str,
        progress: Progress | None = None,
        contract: Contract | None = None,
    ) -> None:
        self.engine = engine
        self.image = image
        self.settings = settings
        self.workload = settings.workload
        self.contract = contract if contract is not None else Contract.assumed(self.workload)
        self.scenario = scenario
        self._progress = progress
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._networks: list[str] = []

    @property
    def stop_timeout(self) -> int:
        """``docker stop -t``, in seconds."""
        return self.settings.stop_timeout

    def step(self, text: str) -> None:
        """Report progress."""
        if self._progress is not None:
            self._progress(f"{self.scenario}: {text}")

    async def start(
        self,
        volume: str | None = None,
        *,
        ready: bool = True,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        what: str = "a container",
    ) -> Service:
        """Start the image on a (new or given) volume; wait until it is ready.

        Args:
            volume: the named volume to mount; a new one when None (none at all when the
                workload mounts no volume).
            ready: wait until the service is ready, then read its PID 1.
            env: environment set after the settings' (what a scenario varies).
            name: the container's name; generated when None.
            what: how progress names the container.

        Raises:
            ContainerError: the container exited, or was not ready in time.
        """
        w = self.workload
        if volume is None:
            volume = ""
            if w.volume_path:
                volume = await made(self.engine.volume, self._volumes.append)
        environment = {"GRACEFUL_STOP_TIMEOUT": str(self.stop_timeout), "PORT": str(w.port)}
        if w.admin_port is not None:
            environment["ADMIN_PORT"] = str(w.admin_port)
            # Reached through its published port (and by a load balancer over a private
            # network), never on the container's loopback, where graceful binds by default.
            environment["ADMIN_HOST"] = "0.0.0.0"
        environment.update(self.settings.env)
        environment.update(env or {})
        ports = [w.port] + ([w.admin_port] if w.admin_port is not None else [])
        self.step(f"starting {what}")
        container = await made(
            lambda: self.engine.run(
                self.image.ref,
                ports=ports,
                env=environment,
                volumes={volume: w.volume_path} if volume and w.volume_path else None,
                init=self.settings.init,
                name=name,
            ),
            self.track,
        )
        service = Service(
            container=container,
            volume=volume,
            main_port=container.host_port(w.port),
            admin_port=container.host_port(w.admin_port) if w.admin_port is not None else None,
        )
        if ready:
            await self.wait_ready(service)
            service.pid1 = await asyncio.to_thread(container.pid1)
        return service

    def ready_url(self, service: Service) -> str:
        """Where readiness is polled: the ready path on the admin or main port, or a work
        request of 0 ms."""
        w = self.workload
        port = service.admin_port if w.ready_on == "admin" else service.main_port
        return f"http://127.0.0.1:{port}{w.ready_target}"

    async def wait_ready(self, service: Service) -> None:
        """Poll readiness (see :meth:`ready_url`) until it answers 200 (2xx for a work
        request).

        Raises:
            ContainerError: the container exited, or was not ready in time; the message
                carries a diagnosis when the logs show one (an admin server on loopback).
        """
        w = self.workload
        url = self.ready_url(service)
        self.step("waiting until ready")
        deadline = time.monotonic() + self.settings.startup_timeout
        last = "no answer"
        # A bound per poll, not a speed claim: a 0 s work request may be slow (an endpoint
        # that ignores the duration asked), and timing out each poll would never see it ready.
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while True:
                try:
                    status = (await client.get(url)).status_code
                    if status == 200 or (w.ready_on == "work" and 200 <= status < 300):
                        return
                    last = f"HTTP {status}"
                except httpx.HTTPError as exc:
                    last = classify(exc)[0].value
                if not await asyncio.to_thread(lambda: service.container.running):
                    logs = await asyncio.to_thread(service.container.logs)
                    raise ContainerError(
                        f"the container exited with code {service.container.exit_code} before "
                        f"it was ready; its last log lines:\n{_tail(logs)}"
                    )
                if time.monotonic() > deadline:
                    logs = await asyncio.to_thread(service.container.logs)
                    diagnosis = not_ready_diagnosis(logs, w)
                    raise ContainerError(
                        f"the container was not ready within {self.settings.startup_timeout} s "
                        f"({url} never answered 200; last: {last})"
                        + (f": {diagnosis}" if diagnosis else "")
                        + f"; its last log lines:\n{_tail(logs)}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self, service: Service) -> StopResult:
        """``docker stop -t stop_timeout``, timed."""
        self.step(f"docker stop -t {self.stop_timeout}")
        return await asyncio.to_thread(service.container.stop, self.stop_timeout)

    async def kill(self, service: Service, sig: str) -> bool:
        """``docker kill --signal sig``; False when the container had already exited."""
        return await asyncio.to_thread(service.container.kill, sig)

    async def wait_exit(
        self, service: Service, started: float, timeout: float
    ) -> StopResult | None:
        """Wait for the container to exit, timed from ``started``; None when it did not."""
        return await asyncio.to_thread(service.container.wait_exit, started, timeout)

    async def logs(self, service: Service) -> str:
        """The container's output."""
        return await asyncio.to_thread(service.container.logs)

    def client(self, service: Service, ledger: Ledger, *, timeout: float = 30.0) -> LoadClient:
        """A load client for the service's published HTTP port."""
        return self.load_client(service.main_port, ledger, timeout=timeout)

    def load_client(
        self, port: int, ledger: Ledger, *, timeout: float = 30.0, connections: int = 32
    ) -> LoadClient:
        """A load client for a host port on 127.0.0.1 that serves the workload (the
        service's, or a load balancer's in front of several)."""
        return LoadClient(
            port,
            workload=self.workload,
            ledger=ledger,
            connections=connections,
            timeout=timeout,
            id_prefix=f"{self.engine.run_id}-{self.scenario}",
        )

    def track(self, container: Container) -> None:
        """Remove ``container`` with this scenario's own (for sidecars started elsewhere)."""
        self._containers.append(container.id)

    def track_network(self, network: str) -> None:
        """Remove the network ``network`` (id or name) after this scenario's containers."""
        self._networks.append(network)

    async def close(self) -> None:
        """Remove this scenario's containers, volumes and networks."""
        await asyncio.to_thread(self.remove_now)

    def remove_now(self) -> None:
        """Remove this scenario's containers, volumes and networks (blocking)."""
        containers, volumes, networks = self._containers, self._volumes, self._networks
        self._containers, self._volumes, self._networks = [], [], []
        remove(self.engine.client, containers=containers, volumes=volumes, networks=networks)


async def made(create: Callable[[], T], track: Callable[[T], object]) -> T:
    """Run a blocking creation in a thread and ``track`` what it made, even when cancelled.

    Cancelling ``asyncio.to_thread`` does not stop its thread: the container (or volume) is
    created all the same, after the clean-up that should have removed it had run (an
    interrupted harness left a running container with published ports, and a volume the
    create made again without labels). So a cancellation waits for the creation to return,
    tracks what it made, then raises. A second cancellation stops the wait; the engine's
    close still waits for the creation (:meth:`Engine.creating`).
    """
    creation = asyncio.ensure_future(asyncio.to_thread(create))
    try:
        result = await asyncio.shield(creation)
    except asyncio.CancelledError:
        try:
            result = await creation
        except Exception:
            raise asyncio.CancelledError from None  # it made nothing; the stop goes on
        track(result)
        raise
    track(result)
    return result


async def gather_bounded(tasks: Sequence[asyncio.Task[Any]], timeout: float = HANG_GUARD_S) -> None:
    """Wait for load tasks; cancel what is left after ``timeout`` (a hang guard)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# The host of graceful's `admin.listening` event, JSON (`"host": "127.0.0.1"`) or console
# (`host=127.0.0.1`) rendering, when it is a loopback address.
_LOOPBACK_HOST = re.compile(r"\bhost\W+(127\.\d+\.\d+\.\d+|localhost|::1)\b", re.IGNORECASE)


def not_ready_diagnosis(logs: str, workload: Workload) -> str:
    """Why readiness never answered, when the logs tell: the admin server listening on the
    container's loopback, which no published port reaches.

    .. versionadded:: 0.1
    """
    if workload.ready_on != "admin":
        return ""
    for line in logs.splitlines():
        match = _LOOPBACK_HOST.search(line) if "admin.listening" in line else None
        if match is not None:
            break
    else:
        if "admin.listening" in logs:
            return ""
        return (
            f"the logs show no admin server (graceful logs admin.listening): if the image "
            f"has none on port {workload.admin_port}, judge it with --admin-port off, and "
            "readiness on the main port (--ready-path /health) or none (--ready-path '')"
        )
    return (
        f"the admin server listens on {match.group(1)} inside the container (its log says "
        "admin.listening on loopback), which the published admin port cannot reach; the "
        f"harness passes ADMIN_PORT={workload.admin_port} and ADMIN_HOST=0.0.0.0, so the "
        "image sets ADMIN_HOST back or ignores it: read ADMIN_HOST from the environment "
        "(graceful.Config.from_env does), or judge readiness on the main port "
        "(--ready-path main:/PATH, or --admin-port off)"
    )


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"

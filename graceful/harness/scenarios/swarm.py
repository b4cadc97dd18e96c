"""The ``swarm-update`` scenario: ``docker service update`` of a Swarm service behind HAProxy.

The image runs as a replicated Swarm service (:mod:`graceful.harness.swarm`) on an overlay
network, with ``--endpoint-mode dnsrr``, ``--stop-grace-period`` equal to the stop timeout and a
health check on its readiness. HAProxy on the same network finds the tasks through Docker's DNS
(``tasks.<service>``), checks their readiness and retries nothing; its discovery and check
settings are a named profile (:mod:`graceful.harness.swarm_profile`). While load runs through
the balancer's port published on 127.0.0.1, Swarm replaces every task: ``--update-parallelism
1`` (stop-first), then ``--update-order start-first``, then a one-replica service updated
start-first.

It passes when every request was answered (no 5xx from the balancer, no reset), every
replaced task exited 0 (as Swarm recorded it), every update ``completed``, and the engine's
swarm state, services and networks are as they were. ``docs/swarm.md`` explains every step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import httpx

from graceful.harness.cluster import LB_CONFIG_PATH, LB_IMAGE
from graceful.harness.container import ContainerError
from graceful.harness.context import HANG_GUARD_S, Context, Findings, gather_bounded
from graceful.harness.contract import Capability
from graceful.harness.load import Ledger
from graceful.harness.report import ScenarioResult
from graceful.harness.swarm import Swarm
from graceful.harness.swarm_events import StopWatch, stopped_tasks
from graceful.harness.swarm_profile import PROFILES, LbProfile, parse_profile
from graceful.harness.swarm_report import SwarmOutcome, SwarmRoll, headline, judge, task_stop

__all__ = ["ROLL_KINDS", "SwarmUpdate", "configure"]

#: What each roll does: (update order, replicas during the update).
ROLL_KINDS = {
    "stop-first": "docker service update --force --update-parallelism 1",
    "start-first": "docker service update --force --update-parallelism 1 "
    "--update-order start-first",
    "one-replica": "docker service scale SERVICE=1, then docker service update --force "
    "--update-order start-first",
}
_MAX_REQUESTS = 1_000_000
_LB_APP_PORT = 8080
_LB_OBSERVE_PORT = 8404
_POLL_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmUpdate:
    """Update a Swarm service behind HAProxy under load: no request may fail, every replaced
    task must exit 0, the engine must end as it began.

    Args:
        replicas: the service's tasks (the one-replica roll scales it to 1 first).
        rolls: what each roll does, in order (keys of :data:`ROLL_KINDS`).
        profile: the balancer's discovery and check settings.
        delay: ``GRACEFUL_DELAY`` of the tasks; None for what ``profile`` needs, plus 1 s.
        concurrency: requests in flight at once through the balancer.
        work_ms: the work each request asks for.
        lb_image: the HAProxy image.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "swarm-update"
    opt_in: ClassVar[bool] = True
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.WORK})
    summary: ClassVar[str] = (
        "opt-in: docker service update of a Swarm service behind HAProxy on tasks.<service> "
        "under load (parallelism 1, start-first, one replica; needs graceful-lb:bookworm): "
        "no request fails, every task exits 0, the swarm is left as found"
    )
    replicas: int = 3
    rolls: tuple[str, ...] = ("stop-first", "start-first", "one-replica")
    profile: LbProfile = PROFILES["default"]
    delay: float | None = None
    concurrency: int = 8
    work_ms: int = 20
    lb_image: str = LB_IMAGE

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.concurrency < 1 or not self.rolls:
            raise ValueError("replicas and concurrency must be at least 1, and rolls not empty")
        unknown = [r for r in self.rolls if r not in ROLL_KINDS]
        if unknown:
            raise ValueError(f"unknown roll {unknown[0]!r}; known: {', '.join(ROLL_KINDS)}")
        if (self.delay is not None and not 0 <= self.delay <= 300) or self.work_ms < 0:
            raise ValueError("delay must be 0 to 300 s and work_ms not negative")

    @property
    def graceful_delay(self) -> float:
        """The ``GRACEFUL_DELAY`` the tasks run with."""
        return float(self.profile.delay()) if self.delay is None else self.delay

    def stop_timeout(self, asked: int) -> int:
        """The tasks' stop timeout: ``asked``, raised when the delay would not leave a drain
        (graceful clamps its delay to the drain's end)."""
        delay = self.graceful_delay
        return max(asked, math.ceil(delay) + 7) if delay > 0 else asked

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        outcome = await self.measure(ctx)
        judge(f, ctx, outcome)
        records = [r for roll in outcome.rolls for r in roll.ledger.records]
        stops = [task_stop(t) for roll in outcome.rolls for t in roll.stopped]
        return f.result(self.name, stop=headline(stops), ledger=Ledger(records))

    async def measure(self, ctx: Context) -> SwarmOutcome:
        """Set the swarm up, run the rolls under load, remove everything; what happened.

        Raises:
            ContainerError: a set-up step failed (no load-balancer image, a task that never
                became healthy, an engine in a swarm the harness does not own).
        """
        outcome = SwarmOutcome(
            profile=self.profile,
            delay=self.graceful_delay,
            stop_timeout=self.stop_timeout(ctx.stop_timeout),
        )
        swarm = Swarm(ctx.engine)
        watch: StopWatch | None = None
        try:
            ctx.step("joining a single-node swarm")
            await swarm.run(swarm.open, waiting=ctx.step)
            service, lb = await self._set_up(ctx, swarm, outcome)
            service_id = str(swarm.client.services.get(service).id)
            watch = await swarm.run(StopWatch, swarm.client, service_id)
            await self._roll(ctx, swarm, service, lb, outcome, watch)
            outcome.lb_logs = await swarm.run(lb.logs)
        finally:
            ctx.step("removing the service, the balancer and the network")
            # A Ctrl-C cancels this coroutine, not the engine call a thread is making (a swarm
            # init, a service create): let it end, so the clean-up sees what it made.
            await swarm.settle()
            # Blocking on purpose: a cancelled scenario (Ctrl-C, SIGTERM) must still leave the
            # engine's swarm as it found it, and nothing here may be cancelled half-way.
            if watch is not None:
                watch.close()
            outcome.left = swarm.close()
        return outcome

    async def _set_up(self, ctx: Context, swarm: Swarm, outcome: SwarmOutcome) -> tuple[str, Any]:
        import importlib.resources

        engine, w = ctx.engine, ctx.workload
        base = f"graceful-harness-{engine.run_id}"
        network = await swarm.run(swarm.network, f"{base}-swarm")
        service = f"{base}-app"
        env = {"GRACEFUL_STOP_TIMEOUT": str(outcome.stop_timeout), "PORT": str(w.port)}
        if w.admin_port is not None:
            env.update(ADMIN_PORT=str(w.admin_port), ADMIN_HOST="0.0.0.0")
        env.update(ctx.settings.env)
        env["GRACEFUL_DELAY"] = f"{outcome.delay:g}"
        ctx.step(
            f"creating {self.replicas} tasks of {ctx.image.ref} (GRACEFUL_DELAY={outcome.delay:g})"
        )
        await swarm.run(
            swarm.create_service,
            service,
            ctx.image.ref,
            network=network,
            replicas=self.replicas,
            env=env,
            stop_grace_period=outcome.stop_timeout,
            health=_health_command(ctx),
            init=ctx.settings.init,
        )
        await swarm.run(
            swarm.wait_converged, service, self.replicas, what="the service's first tasks"
        )
        check_port = w.admin_port if w.ready_on == "admin" and w.admin_port else w.port
        lb_env = {
            "LB_SERVICE": service,
            # Tasks that left DNS keep their slot for hold obsolete, beside their replacements.
            "LB_SLOTS": str(3 * self.replicas + 2),
            "LB_APP_PORT": str(w.port),
            "LB_CHECK_PORT": str(check_port),
            "LB_CHECK_PATH": w.ready_target,
            **self.profile.env(),
        }
        resource = importlib.resources.files("graceful.harness").joinpath("haproxy_swarm.conf")
        with importlib.resources.as_file(resource) as config:
            lb = await swarm.run(self._start_lb, ctx, swarm, network, lb_env, str(config))
        await self._wait_lb(lb, self.replicas)
        return service, lb

    def _start_lb(
        self, ctx: Context, swarm: Swarm, network: str, env: dict[str, str], config: str
    ) -> Any:
        import docker.errors

        try:
            ctx.engine.client.images.get(self.lb_image)
        except docker.errors.ImageNotFound as exc:
            raise ContainerError(
                f"no load-balancer image {self.lb_image!r} on this engine (nothing is pulled): "
                "build it with `bash docker/build.sh` (HAProxy from Debian 12)"
            ) from exc
        lb = ctx.engine.run(
            self.lb_image,
            name=f"graceful-harness-{ctx.engine.run_id}-swarm-lb",
            network=network,
            env=env,
            binds={config: LB_CONFIG_PATH},
            ports=[_LB_APP_PORT, _LB_OBSERVE_PORT],
            hardened=True,
        )
        swarm.containers.append(lb.id)
        return lb

    async def _wait_lb(self, lb: Any, replicas: int) -> None:
        """Wait until exactly ``replicas`` tasks are ``UP`` in the balancer (tasks that left
        DNS may keep a slot, ``DOWN``, for the profile's ``hold obsolete``)."""
        deadline = time.monotonic() + HANG_GUARD_S + self.profile.dns_seconds
        last: list[tuple[str, str]] = []
        while True:
            with contextlib.suppress(httpx.HTTPError):
                last = await _stats(lb.host_port(_LB_OBSERVE_PORT))
                if sum(status == "UP" for status, _ in last) == replicas:
                    return
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"the load balancer never routed to {replicas} tasks, all UP; its slots: "
                    f"{last or 'none'}"
                )
            await asyncio.sleep(_POLL_S)

    async def _roll(
        self,
        ctx: Context,
        swarm: Swarm,
        service: str,
        lb: Any,
        outcome: SwarmOutcome,
        watch: StopWatch,
    ) -> None:
        ledger = Ledger()
        stop_load = asyncio.Event()
        bound = len(self.rolls) * (self.replicas + 2) * (outcome.stop_timeout + HANG_GUARD_S)
        async with ctx.load_client(
            lb.host_port(_LB_APP_PORT),
            ledger,
            connections=self.concurrency,
            timeout=outcome.stop_timeout + HANG_GUARD_S,
        ) as client:
            load = asyncio.create_task(
                client.steady(
                    stop=stop_load,
                    concurrency=self.concurrency,
                    ms=ctx.workload.short_ms(self.work_ms),
                    max_requests=_MAX_REQUESTS,
                    max_seconds=bound,
                    retry_after=0.01,
                )
            )
            try:
                for number, kind in enumerate(self.rolls, 1):
                    roll = SwarmRoll(kind=kind, started=time.monotonic(), started_wall=time.time())
                    outcome.rolls.append(roll)
                    ctx.step(f"roll {number} of {len(self.rolls)}: {ROLL_KINDS[kind]}")
                    try:
                        await self._one_roll(ctx, swarm, service, lb, roll, watch)
                    except ContainerError as exc:  # judged with what was measured so far
                        roll.error = str(exc)
                        break
            finally:
                stop_load.set()
                await gather_bounded([load])
        if not load.cancelled() and load.exception() is not None:
            raise RuntimeError("the load client failed") from load.exception()
        inf = float("inf")
        rolls = outcome.rolls
        for i, roll in enumerate(rolls):
            last = i + 1 == len(rolls)
            start, end = (roll.started if i else -inf), (inf if last else rolls[i + 1].started)
            roll.ledger = Ledger([r for r in ledger.records if start <= r.sent < end])
            roll.window = (
                roll.started_wall if i else -inf,
                inf if last else rolls[i + 1].started_wall,
            )

    async def _one_roll(
        self, ctx: Context, swarm: Swarm, service: str, lb: Any, roll: SwarmRoll, watch: StopWatch
    ) -> None:
        # Tasks already stopped before this roll (earlier rolls') are not this roll's.
        known = {
            str(t["ID"])
            for t in await swarm.run(_all_tasks, swarm, service)
            if t.get("DesiredState") != "running"
        }
        since = time.time() - 1.0
        replicas = self.replicas
        if roll.kind == "one-replica" and replicas > 1:
            ctx.step(f"docker service scale {service}=1")
            await swarm.run(swarm.scale, service, 1)
            replicas = 1
            await self._wait_lb(lb, 1)
        order = "stop-first" if roll.kind == "stop-first" else "start-first"
        roll.state = await swarm.run(swarm.update, service, order=order)
        if roll.state == "completed":
            await swarm.run(swarm.wait_converged, service, replicas, what="the update")
        roll.seconds = time.monotonic() - roll.started
        # The next roll starts once the balancer has caught up: the new tasks UP, the old ones
        # (held for hold obsolete) marked down by their checks.
        await self._wait_lb(lb, replicas)
        if replicas != self.replicas:
            ctx.step(f"docker service scale {service}={self.replicas}")
            await swarm.run(swarm.scale, service, self.replicas)
            await self._wait_lb(lb, self.replicas)
        tasks = await swarm.run(_all_tasks, swarm, service)
        roll.stopped = await swarm.run(stopped_tasks, tasks, known, watch, since, swarm.logs)


def _all_tasks(swarm: Swarm, service: str) -> list[dict[str, Any]]:
    return list(swarm.client.services.get(service).tasks())


def _health_command(ctx: Context) -> list[str]:
    """The tasks' health check, which is also Swarm's gate into DNS: graceful's own probe
    for graceful's readiness, else ``python3`` asking the workload's ready target."""
    w = ctx.workload
    if ctx.contract.has(Capability.ADMIN_READY) and w.admin_port is not None:
        return ["graceful", "probe", "readyz", "--port", str(w.admin_port)]
    port = w.admin_port if w.ready_on == "admin" and w.admin_port else w.port
    url = f"http://127.0.0.1:{port}{w.ready_target}"
    code = f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"
    return ["python3", "-c", code]


async def _stats(port: int) -> list[tuple[str, str]]:
    """(status, address) of every balancer slot that holds a task (``UP``, ``DOWN``, ...)."""
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
        response = await http.get(f"http://127.0.0.1:{port}/stats;csv")
    response.raise_for_status()
    rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
    return [
        (row["status"], row["addr"])
        for row in rows
        if row.get("pxname") == "tasks" and row.get("addr") and row.get("svname") != "BACKEND"
    ]


def configure(scenarios: Sequence[Any], args: argparse.Namespace) -> list[Any]:
    """``scenarios`` with the ``swarm-update`` one set from the options.

    Raises:
        ValueError: a bad ``--swarm-lb`` or ``--swarm-delay`` (the message names it).

    .. versionadded:: 0.1
    """
    try:
        profile = parse_profile(getattr(args, "swarm_lb", None) or "default")
    except ValueError as exc:
        raise ValueError(f"--swarm-lb: {exc}") from None
    delay = getattr(args, "swarm_delay", None)
    if delay is not None and not (math.isfinite(delay) and 0 <= delay <= 300):
        raise ValueError(f"--swarm-delay: {delay:g} is out of range (0 to 300 s)")
    return [
        replace(s, profile=profile, delay=delay) if isinstance(s, SwarmUpdate) else s
        for s in scenarios
    ]

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
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import httpx

from graceful.harness.cluster import LB_CONFIG_PATH, LB_IMAGE
from graceful.harness.container import ContainerError
from graceful.harness.context import HANG_GUARD_S, Context, Findings
from graceful.harness.contract import Capability
from graceful.harness.load import Ledger
from graceful.harness.report import ScenarioResult
from graceful.harness.steady import split_by_roll, steady_load
from graceful.harness.swarm import UPDATE_TIMEOUT_S, Swarm
from graceful.harness.swarm_clean import sweep
from graceful.harness.swarm_events import StopWatch, stopped_tasks
from graceful.harness.swarm_profile import PROFILES, LbProfile, parse_profile
from graceful.harness.swarm_report import (
    SwarmOutcome,
    SwarmRoll,
    delay_words,
    headline,
    judge,
    task_stop,
)
from graceful.harness.swarm_state import SwarmRefused

__all__ = ["ROLL_KINDS", "TASK_START_S", "SwarmUpdate", "configure", "parse_delay"]

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
# The longest one engine call in flight takes once told to stop: a wait for tasks or an update
# polls every 0.2 s; a create, init or scale is one API call (the SDK's own 60 s timeout).
_CALL_BOUND_S = 60.0
#: Each task's start, health check (every 2 s) and Swarm's 2 s monitor, besides its stop: what
#: ``--swarm-delay`` must leave room for within one update's bound.
TASK_START_S = 10.0


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
    # graceful's /readyz decides the tasks' health check and the report's words on the delay.
    wants: ClassVar[frozenset[Capability]] = frozenset({Capability.ADMIN_READY})
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

    def delay_limit(self) -> float:
        """The largest delay one update's bound leaves room for: every task replaced in turn
        takes its stop timeout (``ceil(delay) + 7`` s at least) and :data:`TASK_START_S`."""
        return float(max(0, math.floor(UPDATE_TIMEOUT_S / self.replicas - TASK_START_S) - 7))

    def stop_timeout(self, asked: int) -> int:
        """The tasks' stop timeout: ``asked``, raised when the delay would not leave a drain
        (graceful clamps its delay to the drain's end)."""
        delay = self.graceful_delay
        return max(asked, math.ceil(delay) + 7) if delay > 0 else asked

    async def run(self, ctx: Context) -> ScenarioResult:
        f = Findings()
        outcome = await self.measure(ctx)
        if outcome.refused:
            # The engine, not the image: nothing was measured.
            f.skip(f"not run on this machine's engine: {outcome.refused}")
            if outcome.left:
                f.problem(f"the engine was not left as it was found: {'; '.join(outcome.left)}")
            return f.result(self.name)
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
        swarm = Swarm(ctx.engine, sweep=sweep)
        watch: StopWatch | None = None
        try:
            ctx.step("joining a single-node swarm")
            try:
                await swarm.run(swarm.open, waiting=ctx.step)
            except SwarmRefused as exc:
                outcome.refused = str(exc)
                return outcome
            service, lb = await self._set_up(ctx, swarm, outcome)
            service_id = str(swarm.client.services.get(service).id)
            watch = await swarm.run(StopWatch, swarm.client, service_id)
            await self._roll(ctx, swarm, service, lb, outcome, watch)
            outcome.lb_logs = await swarm.run(lb.logs)
        finally:
            # A Ctrl-C cancels this coroutine, not the engine call a thread is making (a swarm
            # init, a service create): it is told to stop (a lock wait, an update's polling
            # end at once), and waited for, so the clean-up sees what it made.
            swarm.stopping.set()
            if swarm.busy:
                ctx.step(
                    f"waiting for the engine call in progress to end (up to {_CALL_BOUND_S:g} s)"
                )
            ctx.step("removing the service, the balancer and the network")
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
            f"creating {self.replicas} tasks of {ctx.image.ref} ({delay_words(ctx, outcome.delay)})"
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
        bound = len(self.rolls) * (self.replicas + 2) * (outcome.stop_timeout + HANG_GUARD_S)
        async with steady_load(
            ctx,
            lb.host_port(_LB_APP_PORT),
            ledger,
            concurrency=self.concurrency,
            work_ms=self.work_ms,
            timeout=outcome.stop_timeout + HANG_GUARD_S,
            max_requests=_MAX_REQUESTS,
            max_seconds=bound,
        ):
            for number, kind in enumerate(self.rolls, 1):
                roll = SwarmRoll(kind=kind, started=time.monotonic(), started_wall=time.time())
                outcome.rolls.append(roll)
                ctx.step(f"roll {number} of {len(self.rolls)}: {ROLL_KINDS[kind]}")
                try:
                    await self._one_roll(ctx, swarm, service, lb, roll, watch)
                except ContainerError as exc:  # judged with what was measured so far
                    roll.error = str(exc)
                    break
        split_by_roll(ledger, outcome.rolls)

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
    text = getattr(args, "swarm_lb", None)
    try:
        profile = parse_profile("default" if text is None else text)
    except ValueError as exc:
        raise ValueError(f"--swarm-lb: {exc}") from None
    delay = parse_delay(getattr(args, "swarm_delay", None))
    out = []
    for s in scenarios:
        if isinstance(s, SwarmUpdate):
            s = replace(s, profile=profile, delay=delay)
            limit = s.delay_limit()
            if delay is not None and delay > limit:
                raise ValueError(
                    f"--swarm-delay: {delay:g} s is more than the {limit:g} s one update's "
                    f"{UPDATE_TIMEOUT_S:g} s bound allows with {s.replicas} replicas (each "
                    f"task: a stop timeout of ceil(delay) + 7 s, and {TASK_START_S:g} s to "
                    "start and pass its health check)"
                )
        out.append(s)
    return out


def parse_delay(value: str | float | None) -> float | None:
    """``--swarm-delay``'s value in seconds (a plain ASCII number; ``-0`` is 0).

    Raises:
        ValueError: not a number, or out of 0 to 300 s (the message names the option).

    .. versionadded:: 0.1
    """
    if value is None:
        return None
    if isinstance(value, str):
        if re.fullmatch(r"\s*\+?-?(\d+(\.\d*)?|\.\d+)\s*", value, re.ASCII) is None:
            raise ValueError(f"--swarm-delay: {value!r} is not a number of seconds (e.g. 8, 2.5)")
        value = float(value)
    if not (math.isfinite(value) and 0 <= value <= 300):
        raise ValueError(f"--swarm-delay: {value:g} is out of range (0 to 300 s)")
    return value + 0.0  # -0.0 + 0.0 is 0.0: "-0" is printed as 0

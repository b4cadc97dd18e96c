"""A single-node Docker Swarm for the ``swarm-update`` scenario, left as it was found.

:class:`Swarm` makes sure the engine is a swarm manager (``docker swarm init
--advertise-addr 127.0.0.1`` when it is in no swarm), creates an attachable overlay network
and replicated services on it, runs ``docker service update``, reads what Swarm recorded about
each task (its exit code, its container's stop signal and exit from the engine's events), and
removes everything it created: services (and their task containers), the network, and, only
when it initialised the swarm, the swarm itself and the ``docker_gwbridge`` network the first
overlay container brought. :meth:`Swarm.close` compares ``docker info``'s swarm state, the
services and the networks with what they were before and says what differs.

It refuses to run on an engine that is a member of a swarm with services the harness does not
own (:class:`SwarmRefused`): an update there is someone else's, and leaving would break it.
Runs on one machine take turns (a lock file): one run leaving the swarm it initialised must
not pull it from under another.

Everything goes through the ``docker`` SDK, which is imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from graceful.harness.container import ContainerError
from graceful.harness.engine import LABEL, remove
from graceful.harness.runs import OWNER_LABEL, RunState, run_state
from graceful.harness.swarm_events import SERVICE_ID_LABEL
from graceful.harness.swarm_state import SwarmRefused, SwarmState, swarm_state, take_lock

if TYPE_CHECKING:
    from graceful.harness.engine import Engine

__all__ = ["INIT_LABEL", "Swarm", "clean_swarm"]

# On the node's spec when the harness initialised the swarm: a later run that finds the swarm
# left behind by a run that is over (killed before it could leave) leaves it in its place.
INIT_LABEL = "graceful.harness.swarm-initialised-by"
GWBRIDGE = "docker_gwbridge"
T = TypeVar("T")
_NS = 1_000_000_000


@dataclass(slots=True)
class Swarm:
    """The engine as a single-node swarm, for one scenario run; see the module's docstring.

    Use :meth:`open` first and :meth:`close` at the end (also after a failure or Ctrl-C).

    .. versionadded:: 0.1
    """

    engine: Engine
    lock_timeout: float = 900.0
    before: SwarmState | None = None
    initialised: bool = False
    adopted: bool = False
    services: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    _lock: Any = None
    _calls: list[asyncio.Future[Any]] = field(default_factory=list)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread; cancelling the caller does not abandon the
        call (see :meth:`settle`)."""
        call = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, *args, **kwargs)
        )
        self._calls.append(call)
        return await asyncio.shield(call)

    async def settle(self) -> None:
        """Wait for every call :meth:`run` started, also after the caller was cancelled, so
        that :meth:`close` sees what they created."""
        while True:
            left = [c for c in self._calls if not c.done()]
            if not left:
                return
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(left)

    @property
    def client(self) -> Any:
        return self.engine.client

    def open(self, *, waiting: Any = None) -> None:
        """Take this machine's swarm lock, note the state, and join a swarm if need be.

        Args:
            waiting: called once with a sentence when another run holds the lock.

        Raises:
            SwarmRefused: the engine is a swarm worker, or a member of a swarm with services
                the harness does not own, or in a state it cannot work in; or another run
                kept the lock past ``lock_timeout``.
        """
        self._take_lock(waiting)
        self.before = swarm_state(self.client)
        info = self.client.info().get("Swarm") or {}
        state = self.before.node_state
        if state == "inactive":
            self.client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
            self.initialised = True
            self._mark_initialised()
            return
        if state != "active":
            raise SwarmRefused(
                f"the engine's swarm state is {state!r} ({info.get('Error') or 'no error'}): "
                "the scenario runs on an engine in no swarm, or a manager of an active one"
            )
        if not info.get("ControlAvailable"):
            raise SwarmRefused(
                "the engine is a worker of a swarm: creating services needs a manager, and the "
                "scenario does not touch a swarm it does not own; run it on an engine in no "
                "swarm"
            )
        foreign = sorted(
            str(s.name)
            for s in self.client.services.list()
            if LABEL not in ((s.attrs.get("Spec") or {}).get("Labels") or {})
        )
        if foreign:
            raise SwarmRefused(
                f"the engine is a member of a swarm with {len(foreign)} service(s) the harness "
                f"does not own ({', '.join(foreign[:5])}{', ...' * (len(foreign) > 5)}): an "
                "update there would run beside someone else's tasks; run the scenario on an "
                "engine in no swarm (it initialises one and leaves it at the end)"
            )
        # A swarm a harness run initialised and could not leave (it was killed): this run
        # leaves it in that run's place, so the engine ends as it was before that run.
        owner = self._initialised_by()
        if owner is not None and run_state(owner) is RunState.OVER:
            self.initialised = self.adopted = True

    def _take_lock(self, waiting: Any) -> None:
        self._lock = take_lock(self.lock_timeout, waiting)

    def _node(self) -> Any:
        return self.client.nodes.get(str(self.client.info()["Swarm"]["NodeID"]))

    def _mark_initialised(self) -> None:
        node = self._node()
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), INIT_LABEL: self.engine.labels[OWNER_LABEL]}
        node.update(spec)

    def _initialised_by(self) -> str | None:
        labels = (self._node().attrs.get("Spec") or {}).get("Labels") or {}
        value = labels.get(INIT_LABEL)
        return str(value) if value else None

    # --- what the scenario creates -------------------------------------------------------------

    def network(self, name: str) -> str:
        """Create an attachable overlay network (labelled like the harness's other objects)."""
        network = self.client.networks.create(
            name, driver="overlay", attachable=True, labels=dict(self.engine.labels)
        )
        self.networks.append(str(network.name))
        return str(network.name)

    def create_service(
        self,
        name: str,
        image: str,
        *,
        network: str,
        replicas: int,
        env: Mapping[str, str],
        stop_grace_period: float,
        health: Sequence[str],
        init: bool = False,
    ) -> None:
        """``docker service create --endpoint-mode dnsrr --replicas N --stop-grace-period S
        --health-cmd ...`` on ``network`` (:meth:`wait_converged` waits for its tasks)."""
        import docker.types

        self.client.services.create(
            image,
            name=name,
            labels=dict(self.engine.labels),
            networks=[network],
            env=[f"{k}={v}" for k, v in env.items()],
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            stop_grace_period=int(stop_grace_period * _NS),
            # Swarm puts a task in DNS once this passes: it is the readiness gate. Swarm also
            # stops a task that turns unhealthy, so a probe starved of CPU on a loaded machine
            # must not count: only a task that fails for half a minute is unhealthy.
            healthcheck=docker.types.Healthcheck(
                test=["CMD", *health],
                interval=2 * _NS,
                timeout=5 * _NS,
                retries=15,
                start_period=60 * _NS,
            ),
            init=init,
            # A task that fails is not restarted in a loop behind the scenario's back.
            restart_policy=docker.types.RestartPolicy(condition="none"),
        )
        self.services.append(name)

    def running(self, name: str) -> list[dict[str, Any]]:
        """The service's tasks that Swarm wants running."""
        service = self.client.services.get(name)
        return list(service.tasks(filters={"desired-state": "running"}))

    def wait_converged(
        self, name: str, replicas: int, *, what: str, timeout: float = 120.0
    ) -> None:
        """Wait until ``replicas`` tasks run (healthy, when there is a health check) and no
        other task of the service is still alive.

        Raises:
            ContainerError: not within ``timeout``; the message carries Swarm's task errors.
        """
        deadline = time.monotonic() + timeout
        started = datetime.now(UTC).isoformat()
        while True:
            tasks = self.client.services.get(name).tasks()
            running = [
                t
                for t in tasks
                if t.get("DesiredState") == "running" and t["Status"].get("State") == "running"
            ]
            alive = [t for t in tasks if t["Status"].get("State") in _ALIVE]
            if len(running) == replicas and len(alive) == replicas:
                return
            # A task of this wait that failed will not come back (restart condition none).
            failed = [
                t
                for t in tasks
                if t["Status"].get("State") in ("failed", "rejected")
                and str(t.get("CreatedAt")) >= started[:19]
            ]
            if failed or time.monotonic() > deadline:
                errors = sorted(
                    {str(t["Status"].get("Err") or t["Status"].get("Message")) for t in tasks}
                )
                logs = ""
                if failed:
                    status = failed[0]["Status"].get("ContainerStatus") or {}
                    tail = self.logs(str(status.get("ContainerID") or "")).strip()
                    logs = "; its last log lines:\n" + "\n".join(tail.splitlines()[-10:])
                raise ContainerError(
                    f"{what}: {len(running)} of {replicas} tasks of {name} running"
                    f"{' (a task failed)' if failed else f' after {timeout:g} s'}; Swarm says: "
                    + "; ".join(errors)
                    + logs
                )
            time.sleep(0.2)

    def update(self, name: str, *, order: str, parallelism: int = 1, timeout: float = 600.0) -> str:
        """``docker service update --force --update-parallelism P --update-order ORDER``;
        returns Swarm's final update state (``completed`` when it went through).

        Raises:
            ContainerError: the update did not end within ``timeout``.
        """
        import docker.types

        service = self.client.services.get(name)
        config = docker.types.UpdateConfig(
            parallelism=parallelism,
            delay=0,
            failure_action="pause",
            monitor=2 * _NS,
            order=order,
        )
        service.update(force_update=True, update_config=config)
        deadline = time.monotonic() + timeout
        while True:
            status = self.client.services.get(name).attrs.get("UpdateStatus") or {}
            state = str(status.get("State") or "")
            if state and state not in ("updating", "rollback_started"):
                return state
            if time.monotonic() > deadline:
                raise ContainerError(f"the update of {name} did not end within {timeout:g} s")
            time.sleep(0.2)

    def scale(self, name: str, replicas: int) -> None:
        """``docker service scale NAME=N``; returns once it has converged."""
        self.client.services.get(name).scale(replicas)
        self.wait_converged(name, replicas, what=f"scaling to {replicas}")

    def logs(self, container: str) -> str:
        """A container's output ("" when it is gone)."""
        import docker.errors

        if not container:
            return ""
        try:
            return str(self.client.containers.get(container).logs().decode(errors="replace"))
        except docker.errors.APIError:
            return ""

    # --- clean-up -------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove what this run created, leave the swarm if it initialised it; returns how
        the engine now differs from before (empty when it is as it was): its swarm state, its
        services, and the networks this run or a swarm could have made.

        Every step runs even when an earlier one failed, and a Ctrl-C in the middle is held
        until the last step has run: a half-removed swarm is worse than a slower exit.
        """
        if self.before is None:
            self._release()
            return []
        interrupted = False
        made = list(self.networks)
        for step in (self._remove_services, self._remove_containers, self._remove_networks,
                     self._leave):  # fmt: skip
            for _ in range(3):  # a second Ctrl-C must not skip the rest
                try:
                    step()
                    break
                except KeyboardInterrupt:
                    interrupted = True
                except Exception:  # one failed step must not skip the others
                    break
        try:
            after = swarm_state(self.client)
            return self.before.only(made).differences(after.only(made))
        finally:
            self._release()
            if interrupted:
                raise KeyboardInterrupt

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _remove_services(self) -> None:
        import docker.errors

        ids: list[str] = []
        for name in self.services:
            with contextlib.suppress(docker.errors.APIError):
                service = self.client.services.get(name)
                ids.append(str(service.id))
                service.remove()
        self.services.clear()
        # The agent stops the tasks with their grace period; nothing of the scenario needs
        # them any more, so their containers go at once.
        deadline = time.monotonic() + 60.0
        while ids and time.monotonic() < deadline:
            left = [
                str(c.id)
                for sid in ids
                for c in self.client.containers.list(
                    all=True, filters={"label": f"{SERVICE_ID_LABEL}={sid}"}
                )
            ]
            if not left:
                return
            remove(self.client, containers=left)
            time.sleep(0.2)

    def _remove_containers(self) -> None:
        remove(self.client, containers=self.containers)
        self.containers.clear()

    def _remove_networks(self) -> None:
        import docker.errors

        # An overlay network is released a moment after its last task's container is gone.
        for name in self.networks:
            deadline = time.monotonic() + 20.0
            while True:
                try:
                    self.client.api.remove_network(name)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        self.networks.clear()

    def _leave(self) -> None:
        import docker.errors

        assert self.before is not None
        if self.initialised:
            with contextlib.suppress(docker.errors.APIError):
                self.client.swarm.leave(force=True)
            self.initialised = False
        if GWBRIDGE not in self.before.networks:
            # Docker made it for the first container on an overlay network; it is not in use
            # once the swarm is gone (an in-use one is refused, and kept).
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.remove_network(GWBRIDGE)


# Task states in which a task's container may still run.
_ALIVE = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting",
                    "running"})  # fmt: skip


def clean_swarm(engine: Engine, *, everything: bool = False) -> int:
    """Remove the Swarm services (with their task containers and networks) of harness runs
    that are over, and leave a swarm such a run initialised once nothing else runs in it
    (``graceful harness clean``: a killed run cannot clean up). With ``everything``, also
    those of runs still going. Nothing happens while a run holds this machine's swarm lock.

    Returns:
        How many services, networks and swarms were removed or left.

    .. versionadded:: 0.1
    """
    info = engine.client.info().get("Swarm") or {}
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        return 0
    try:
        lock = take_lock(timeout=0.0)
    except SwarmRefused:
        return 0  # a run is going: its swarm is not ours to touch
    swarm = Swarm(engine, before=swarm_state(engine.client))
    swarm._lock = lock
    for service in engine.client.services.list():
        labels = (service.attrs.get("Spec") or {}).get("Labels") or {}
        if LABEL in labels and (everything or run_state(labels.get(OWNER_LABEL)) is RunState.OVER):
            swarm.services.append(str(service.name))
            # Its overlay network is named after the run, like the service; the run's balancer
            # (a container on it) must go first.
            swarm.networks.append(str(service.name).removesuffix("-app") + "-swarm")
            run = {"label": f"{LABEL}={labels[LABEL]}"}
            swarm.containers += [
                str(c.id) for c in engine.client.containers.list(all=True, filters=run)
            ]
    owner = swarm._initialised_by()
    others = len(engine.client.services.list()) - len(swarm.services)
    swarm.initialised = (
        owner is not None and not others and (everything or run_state(owner) is RunState.OVER)
    )
    if swarm.initialised and swarm.before is not None:
        # The run that made the swarm also brought docker_gwbridge: it goes with the swarm.
        swarm.before = replace(swarm.before, networks=swarm.before.networks - {GWBRIDGE})
    removed = len(swarm.services) + int(swarm.initialised)
    with contextlib.suppress(Exception):
        removed += sum(1 for n in swarm.networks if engine.client.networks.list(names=[n]))
    swarm.close()
    return removed

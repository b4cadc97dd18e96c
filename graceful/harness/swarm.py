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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from graceful.harness.container import ContainerError
from graceful.harness.engine import LABEL, remove
from graceful.harness.runs import OWNER_LABEL
from graceful.harness.swarm_events import SERVICE_ID_LABEL
from graceful.harness.swarm_state import (
    GWBRIDGE,
    LockWaitStopped,
    SwarmRefused,
    SwarmState,
    swarm_state,
    take_lock,
)

if TYPE_CHECKING:
    from graceful.harness.engine import Engine

__all__ = ["INIT_LABEL", "UPDATE_TIMEOUT_S", "Swarm"]

# On the node's spec when the harness initialised the swarm: a later run that finds the swarm
# left behind by a run that is over (killed before it could leave) leaves it in its place
# (graceful.harness.swarm_clean).
INIT_LABEL = "graceful.harness.swarm-initialised-by"
#: How long one ``docker service update`` may take before the roll is given up.
UPDATE_TIMEOUT_S = 600.0
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
    #: Set when the run is stopped: a lock wait, an update or a wait for tasks ends at once,
    #: and nothing is created any more.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: Removes what killed runs left (:func:`graceful.harness.swarm_clean.sweep`), called
    #: under the lock before the state is noted; given by the caller (that module uses this).
    sweep: Callable[..., int] | None = None
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
            # A call whose caller was cancelled raised into nobody: its error is retrieved
            # here (else asyncio prints "Future exception was never retrieved" at exit).
            for call in self._calls:
                if call.done() and not call.cancelled():
                    call.exception()

    @property
    def busy(self) -> bool:
        """An engine call :meth:`run` started is still going."""
        return any(not c.done() for c in self._calls)

    def check_stop(self) -> None:
        """Raise when the run was stopped (see :attr:`stopping`).

        Raises:
            LockWaitStopped: :attr:`stopping` is set.
        """
        if self.stopping.is_set():
            raise LockWaitStopped("the run was stopped")

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
                kept the lock past ``lock_timeout``, or the lock file cannot be used.
            LockWaitStopped: the run was stopped before the engine was touched.
        """
        self._take_lock(waiting)
        self.check_stop()  # stopped while waiting: touch nothing
        info = self.client.info().get("Swarm") or {}
        if info.get("LocalNodeState") == "active" and info.get("ControlAvailable"):
            # What a killed run left (its services, balancer, network, the swarm it made):
            # removed first, as `graceful harness clean` does, so the state noted below is
            # the engine's as it was before that run.
            if self.sweep is not None:
                self.sweep(self.engine, everything=False)
            info = self.client.info().get("Swarm") or {}
        self.before = swarm_state(self.client)
        state = self.before.node_state
        if state == "inactive":
            self.check_stop()
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

    def _take_lock(self, waiting: Any) -> None:
        self._lock = take_lock(self.lock_timeout, waiting, self.stopping)

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
            self.check_stop()
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
                unhealthy = self._health(tasks) if not failed else ""
                if unhealthy:
                    raise ContainerError(
                        f"{what}: {len(running)} of {replicas} tasks of {name} running after "
                        f"{timeout:g} s: the others never became healthy; {unhealthy}"
                    )
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

    def _health(self, tasks: Sequence[dict[str, Any]]) -> str:
        """The last health-check output of a started task that is not healthy ("" when no
        such task has one)."""
        import docker.errors

        for task in tasks:
            status = task["Status"].get("ContainerStatus") or {}
            if task["Status"].get("State") not in _ALIVE or not status.get("ContainerID"):
                continue
            try:
                container = self.client.containers.get(str(status["ContainerID"]))
            except docker.errors.APIError:
                continue
            health = (container.attrs.get("State") or {}).get("Health") or {}
            log = health.get("Log") or []
            if health.get("Status") != "healthy" and log:
                last = log[-1]
                output = " ".join(str(last.get("Output") or "").split())[-300:]
                return (
                    f"the last health check of task {str(task['ID'])[:12]} "
                    f"({health.get('Status')}) exited {last.get('ExitCode')}: "
                    f"{output or 'no output'}"
                )
        return ""

    def update(
        self, name: str, *, order: str, parallelism: int = 1, timeout: float = UPDATE_TIMEOUT_S
    ) -> str:
        """``docker service update --force --update-parallelism P --update-order ORDER``;
        returns Swarm's final update state (``completed`` when it went through).

        Swarm runs the update by itself; this polls it, so a stopped run stops waiting at
        once (:meth:`close` then removes the service mid-update).

        Raises:
            ContainerError: the update did not end within ``timeout``.
            LockWaitStopped: the run was stopped.
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
            self.check_stop()
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
            # once the swarm is gone (an in-use one is refused, and kept); the routing mesh's
            # sandbox (on ingress) lets go of it a moment after the leave.
            deadline = time.monotonic() + 15.0
            while True:
                names = {str(n.name) for n in self.client.networks.list(names=["ingress"])}
                if "ingress" not in names or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            while True:
                try:
                    self.client.api.remove_network(GWBRIDGE)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.3)


# Task states in which a task's container may still run.
_ALIVE = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting",
                    "running"})  # fmt: skip

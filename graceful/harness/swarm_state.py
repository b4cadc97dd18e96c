"""The engine's swarm state, compared before and after a run, and the lock runs take turns by.

:class:`SwarmState` is what the ``swarm-update`` scenario must leave as it found: ``docker
info``'s swarm state, the services and the networks. :func:`take_lock` is this machine's swarm
lock: one run leaving the swarm it initialised must not pull it from under another.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from graceful.harness.container import ContainerError

__all__ = ["LOCK_PATH", "SWARM_NETWORKS", "SwarmRefused", "SwarmState", "swarm_state", "take_lock"]

LOCK_PATH = Path(tempfile.gettempdir()) / "graceful-harness-swarm.lock"
#: The networks a swarm brings: the first overlay container's gateway bridge, the routing mesh.
SWARM_NETWORKS = frozenset({"docker_gwbridge", "ingress"})


class SwarmRefused(ContainerError):
    """The engine is in a state the scenario must not touch (the message says why).

    .. versionadded:: 0.1
    """


@dataclass(frozen=True, slots=True)
class SwarmState:
    """What the scenario must leave as it found: ``docker info``'s swarm state, the services
    and the networks.

    .. versionadded:: 0.1
    """

    node_state: str
    services: frozenset[str]
    networks: frozenset[str]

    def only(self, networks: Iterable[str]) -> SwarmState:
        """This state with only ``networks`` (and the swarm's own, ``docker_gwbridge`` and
        ``ingress``) kept: the part a swarm run can touch. Other networks on a shared engine
        come and go with other people's containers."""
        keep = SWARM_NETWORKS | set(networks)
        return replace(self, networks=frozenset(self.networks & keep))

    def differences(self, later: SwarmState) -> list[str]:
        """How ``later`` differs from this state, in words (empty when it does not)."""
        out: list[str] = []
        if later.node_state != self.node_state:
            out.append(f"swarm state {later.node_state!r}, was {self.node_state!r}")
        for what, before, after in (
            ("service", self.services, later.services),
            ("network", self.networks, later.networks),
        ):
            if after - before:
                out.append(f"{what}s left: {', '.join(sorted(after - before))}")
            if before - after:
                out.append(f"{what}s gone: {', '.join(sorted(before - after))}")
        return out


def take_lock(timeout: float = 900.0, waiting: Any = None) -> IO[str]:
    """This machine's swarm lock (an open file holding an exclusive ``flock``; closing it
    releases the lock): runs that put the engine in a swarm take turns.

    Args:
        timeout: how long to wait for another run to release it.
        waiting: called once with a sentence when another run holds it.

    Raises:
        SwarmRefused: another run held it for ``timeout`` seconds.

    .. versionadded:: 0.1
    """
    lock = LOCK_PATH.open("a+")
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                raise SwarmRefused(
                    f"another swarm-update run on this machine held {LOCK_PATH} for {timeout:g} s"
                ) from None
            if not told and waiting is not None:
                waiting(f"waiting for another swarm-update run on this machine ({LOCK_PATH})")
                told = True
            time.sleep(0.5)


def swarm_state(client: Any) -> SwarmState:
    """The engine's :class:`SwarmState` now.

    .. versionadded:: 0.1
    """
    import docker.errors

    info = client.info().get("Swarm") or {}
    services: frozenset[str] = frozenset()
    if info.get("ControlAvailable"):
        with contextlib.suppress(docker.errors.APIError):
            services = frozenset(str(s.name) for s in client.services.list())
    networks = frozenset(str(n.name) for n in client.networks.list())
    return SwarmState(
        node_state=str(info.get("LocalNodeState") or "inactive"),
        services=services,
        networks=networks,
    )

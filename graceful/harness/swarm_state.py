"""The engine's swarm state, compared before and after a run, and the lock runs take turns by.

:class:`SwarmState` is what the ``swarm-update`` scenario must leave as it found: ``docker
info``'s swarm state, the services and the networks. :func:`take_lock` is this machine's swarm
lock: one run leaving the swarm it initialised must not pull it from under another.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from graceful.harness.container import ContainerError

__all__ = [
    "GWBRIDGE",
    "LOCK_PATH",
    "SWARM_NETWORKS",
    "LockWaitStopped",
    "SwarmRefused",
    "SwarmState",
    "swarm_state",
    "take_lock",
]

LOCK_PATH = Path(tempfile.gettempdir()) / "graceful-harness-swarm.lock"
GWBRIDGE = "docker_gwbridge"
#: The networks a swarm brings: the first overlay container's gateway bridge, the routing mesh.
SWARM_NETWORKS = frozenset({GWBRIDGE, "ingress"})


class SwarmRefused(ContainerError):
    """The engine is in a state the scenario must not touch (the message says why).

    .. versionadded:: 0.1
    """


class LockWaitStopped(SwarmRefused):
    """The run was stopped (Ctrl-C, SIGTERM) while it waited for the swarm lock: it touched
    nothing.

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


def take_lock(
    timeout: float = 900.0, waiting: Any = None, stop: threading.Event | None = None
) -> IO[str]:
    """This machine's swarm lock (an open file holding an exclusive ``flock``; closing it
    releases the lock): runs that put the engine in a swarm take turns.

    Args:
        timeout: how long to wait for another run to release it.
        waiting: called once with a sentence when another run holds it.
        stop: when set (the run was stopped), the wait ends at once with
            :class:`LockWaitStopped`, the lock not taken.

    Raises:
        SwarmRefused: another run held it for ``timeout`` seconds, or the lock file cannot
            be opened (the message names it and the cause).
        LockWaitStopped: ``stop`` was set while waiting.

    .. versionadded:: 0.1
    """
    try:
        lock = LOCK_PATH.open("a+")
    except OSError as exc:
        raise SwarmRefused(
            f"cannot use this machine's swarm lock {LOCK_PATH}: {exc.strerror or exc}; runs "
            "take turns by it (it lives in the temporary directory: set TMPDIR to a writable "
            "one, the same for every run on this machine)"
        ) from None
    deadline = time.monotonic() + timeout
    told = False
    while True:
        if stop is not None and stop.is_set():
            lock.close()
            raise LockWaitStopped("the run was stopped while waiting for the swarm lock")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                lock.close()
                raise SwarmRefused(f"cannot lock {LOCK_PATH}: {exc.strerror or exc}") from None
            if time.monotonic() > deadline:
                lock.close()
                raise SwarmRefused(
                    f"another swarm-update run on this machine held {LOCK_PATH} for {timeout:g} s"
                ) from None
            if not told and waiting is not None:
                waiting(f"waiting for another swarm-update run on this machine ({LOCK_PATH})")
                told = True
            # Polled, not a blocking flock: a stopped run must not wait for another's turn.
            if stop is not None:
                stop.wait(0.2)
            else:
                time.sleep(0.2)


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
    state = str(info.get("LocalNodeState") or "inactive")
    if state == "inactive":
        # The routing mesh goes with the swarm; listed a moment after a leave, it is not
        # part of an engine in no swarm (and must not be "gone" when the run ends).
        networks -= {"ingress"}
    return SwarmState(
        node_state=state,
        services=services,
        networks=networks,
    )

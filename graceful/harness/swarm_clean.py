"""``graceful harness clean`` for Swarm: what killed ``swarm-update`` runs left behind.

A run killed with SIGKILL cannot remove its service, its balancer, its overlay network, nor
leave the swarm it initialised. :func:`clean_swarm` removes them by their labels; a new run
calls :func:`sweep` (under the swarm lock) before it notes the engine's state, so that state
is the engine's as it was before the killed run.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

from graceful.harness.engine import LABEL
from graceful.harness.runs import OWNER_LABEL, RunState, run_state
from graceful.harness.swarm import Swarm
from graceful.harness.swarm_state import GWBRIDGE, SwarmRefused, swarm_state, take_lock

if TYPE_CHECKING:
    from graceful.harness.engine import Engine

__all__ = ["clean_swarm", "sweep"]


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
    try:
        return sweep(engine, everything=everything)
    finally:
        lock.close()


def sweep(engine: Engine, *, everything: bool) -> int:
    """:func:`clean_swarm` with this machine's swarm lock held by the caller (a run taking
    over a swarm a killed run left calls it before it notes the engine's state).

    .. versionadded:: 0.1
    """
    swarm = Swarm(engine, before=swarm_state(engine.client))
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

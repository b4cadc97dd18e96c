"""Removing what harness runs created: by id, by label and by name, then checking.

Every object a run creates carries the label ``graceful.harness=<run id>`` (and its owner,
:mod:`graceful.harness.runs`) and a name that starts with ``graceful-harness-<run id>-``. The
name catches what the label cannot: Docker creates a named volume that a container mounts if
it does not exist, without labels, so a volume removed while a container create was still on
its way comes back unlabelled. :func:`remove` is the one way objects are removed; :func:`sweep`
finds a run's objects and removes them; :func:`leftovers` says what is still there, so that a
clean-up is reported as done only when it is; :func:`clean_up` removes what runs that are over
left behind (``graceful harness clean``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from graceful.harness.runs import OWNER_LABEL, RunState, run_state

#: A volume the engine still holds for a container removed a moment ago: asked again this
#: many times, this far apart (seconds), before it is reported left.
_IN_USE_RETRIES = 25
_IN_USE_PAUSE_S = 0.2

__all__ = ["LABEL", "Cleanup", "clean_up", "leftovers", "name_prefix", "remove", "sweep"]

LABEL = "graceful.harness"


def name_prefix(run_id: str) -> str:
    """How the names of a run's containers, volumes and networks begin."""
    return f"graceful-harness-{run_id}-"


@dataclass(frozen=True, slots=True)
class Cleanup:
    """What the end of a run removed, and what it found still there afterwards.

    Attributes:
        run_id: the run.
        removed: how many containers, volumes and networks were removed.
        left: ``kind name`` of each object still there after the removal (empty: nothing of
            the run is left), or why that could not be checked.
    """

    run_id: str
    removed: int
    left: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line that says exactly what was done."""
        if self.left:
            return (
                f"could not remove {', '.join(self.left)} (run {self.run_id}): remove them with "
                "`graceful harness clean` once the engine answers"
            )
        return (
            f"nothing of run {self.run_id} is left (looked for by label and by name; the "
            f"final sweep removed {self.removed} container(s), volume(s) and network(s))"
        )


def _objects(client: Any, run_id: str | None) -> tuple[set[str], set[str], set[str]]:
    """Containers, volumes and networks of ``run_id`` (every run's when None), found by
    label and, for one run, by name."""
    import docker.errors

    selector = {"label": f"{LABEL}={run_id}" if run_id else LABEL}
    containers: set[str] = set()
    volumes: set[str] = set()
    networks: set[str] = set()
    with contextlib.suppress(docker.errors.APIError):
        containers.update(str(c.id) for c in client.containers.list(all=True, filters=selector))
    with contextlib.suppress(docker.errors.APIError):
        volumes.update(str(v.name) for v in client.volumes.list(filters=selector))
    with contextlib.suppress(docker.errors.APIError):
        networks.update(str(n.name) for n in client.networks.list(filters=selector))
    if run_id:
        prefix = name_prefix(run_id)
        # The engine's name filters match anywhere in a name: keep only the exact prefix.
        with contextlib.suppress(docker.errors.APIError):
            found = client.containers.list(all=True, filters={"name": prefix})
            containers.update(str(c.id) for c in found if str(c.name).startswith(prefix))
        with contextlib.suppress(docker.errors.APIError):
            found = client.volumes.list(filters={"name": prefix})
            volumes.update(str(v.name) for v in found if str(v.name).startswith(prefix))
        with contextlib.suppress(docker.errors.APIError):
            found = client.networks.list(filters={"name": prefix})
            networks.update(str(n.name) for n in found if str(n.name).startswith(prefix))
    return containers, volumes, networks


def sweep(
    client: Any,
    *,
    run_id: str | None = None,
    extra_containers: Sequence[str] = (),
) -> int:
    """Force-remove containers, volumes and networks of the harness.

    Args:
        client: a connected ``docker.DockerClient``.
        run_id: only this run's objects (by label and by name); every harness run's (by
            label) when None.
        extra_containers: container ids to remove as well (in case a label filter misses).

    Returns:
        How many objects were removed.

    .. versionadded:: 0.1
    """
    containers, volumes, networks = _objects(client, run_id)
    return remove(
        client, containers=[*extra_containers, *containers], volumes=volumes, networks=networks
    )


def leftovers(client: Any, run_id: str, containers: Iterable[str] = ()) -> tuple[str, ...]:
    """``kind name`` of each object of ``run_id`` still on the engine (by label, by name and
    by the ids given); the reason instead when the engine cannot be asked."""
    try:
        found, volumes, networks = _objects(client, run_id)
        for cid in containers:
            with contextlib.suppress(Exception):  # gone: NotFound, the expected answer
                client.containers.get(cid)
                found.add(cid)
    except Exception as exc:  # the engine went away: nothing can be said to be removed
        return (f"everything (the engine did not answer: {type(exc).__name__})",)
    named = []
    for cid in sorted(found):
        try:
            named.append(f"container {client.containers.get(cid).name}")
        except Exception:
            continue  # removed meanwhile
    return (
        *named,
        *(f"volume {v}" for v in sorted(volumes)),
        *(f"network {n}" for n in sorted(networks)),
    )


def clean_up(client: Any, *, everything: bool = False) -> tuple[int, set[str]]:
    """Remove what harness runs that are over left behind (``graceful harness clean``).

    Args:
        client: a connected ``docker.DockerClient``.
        everything: also remove the objects of runs still going, or whose owner cannot be
            told from here (another machine's).

    Returns:
        How many objects were removed, and the run ids whose objects were kept.

    .. versionadded:: 0.1
    """
    import docker.errors

    runs: dict[str, RunState] = {}
    selector = {"label": LABEL}
    found: list[Any] = []
    with contextlib.suppress(docker.errors.APIError):
        found += client.containers.list(all=True, filters=selector)
    with contextlib.suppress(docker.errors.APIError):
        found += client.volumes.list(filters=selector)
    with contextlib.suppress(docker.errors.APIError):
        found += client.networks.list(filters=selector)
    for obj in found:
        # Volumes and networks carry their labels at the top, containers in their config.
        labels = obj.attrs.get("Labels") or (obj.attrs.get("Config") or {}).get("Labels") or {}
        run = str(labels.get(LABEL) or "")
        if run and runs.get(run) is not RunState.ALIVE:  # one live object keeps the run
            runs[run] = run_state(labels.get(OWNER_LABEL))
    kept = {run for run, state in runs.items() if state is not RunState.OVER and not everything}
    removed = sum(sweep(client, run_id=run) for run in runs if run not in kept)
    return removed, kept


def remove(
    client: Any,
    *,
    containers: Iterable[str] = (),
    volumes: Iterable[str] = (),
    networks: Iterable[str] = (),
) -> int:
    """Force-remove containers (with their anonymous volumes), then volumes, then networks.

    The one removal every part of the harness uses: a scenario's clean-up, the load
    balancer's network, the end of a run and ``graceful harness clean``. Objects already gone
    (or that the engine refuses to remove) are skipped.

    Args:
        client: a connected ``docker.DockerClient``.
        containers: container ids or names.
        volumes: volume names.
        networks: network ids or names (removed last: containers must have left them).

    Returns:
        How many objects were removed.

    .. versionadded:: 0.1
    """
    import docker.errors

    api = client.api

    def remove_volume(name: str) -> None:
        # A container removed a moment ago may still hold its volume in the engine ("volume is
        # in use", 409) on a loaded machine: ask again for a few seconds before giving up.
        for attempt in range(_IN_USE_RETRIES):
            try:
                api.remove_volume(name, force=True)
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or attempt == _IN_USE_RETRIES - 1:
                    raise
                time.sleep(_IN_USE_PAUSE_S)

    steps = (
        # A stop that is still waiting in another thread returns once the container is gone.
        # v=True: an image's VOLUME gives every container an anonymous volume; drop it too.
        (containers, lambda name: api.remove_container(name, force=True, v=True)),
        (volumes, remove_volume),
        (networks, api.remove_network),
    )
    removed = 0
    for names, remove_one in steps:
        for name in dict.fromkeys(names):
            with contextlib.suppress(docker.errors.APIError):
                remove_one(name)
                removed += 1
    return removed

"""What the engine saw of a Swarm service's containers stopping: signal, exit, exit code.

The engine keeps only its last few hundred events for a later ``docker events --since`` (and
health-check execs fill them fast), so the stop of a task early in a long update is gone by
the time the update ends. A :class:`StopWatch` follows the events live, in a thread, from the
moment the service exists: for every container of the service, when the engine first signalled
it (``kill``) and when it exited (``die``, with its exit code). A task whose container Swarm
removed (a scale-down) is known only from here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ContainerStop", "StopWatch", "StoppedTask", "stopped_tasks"]

_NS = 1_000_000_000
SERVICE_ID_LABEL = "com.docker.swarm.service.id"


@dataclass(frozen=True, slots=True)
class ContainerStop:
    """One container's end as the engine's events recorded it.

    Attributes:
        container: the container's id.
        signalled: when the engine first sent it a signal (Unix time; None when it was not
            signalled: it exited by itself).
        died: when it exited (Unix time).
        exit_code: its exit code.
        slot: the task's slot (from the container's swarm labels; 0 when unknown).
    """

    container: str
    signalled: float | None
    died: float
    exit_code: int | None
    slot: int = 0

    @property
    def seconds(self) -> float | None:
        """From the first signal to the exit."""
        return None if self.signalled is None else self.died - self.signalled


@dataclass(frozen=True, slots=True)
class StoppedTask:
    """A task an update (or a scale-down) replaced, as Swarm and the engine recorded it.

    Attributes:
        task: the task's id.
        slot: its slot in the service.
        container: its container's id ("" when it never had one).
        state: Swarm's last state of it (``shutdown``, ``failed``, ``complete``, ...).
        exit_code: its container's exit code (None when Swarm recorded none).
        stop_seconds: from the engine's stop signal to the container's exit, from the
            engine's events (None when either was not seen).
        logs: the container's output ("" when it was already removed).
    """

    task: str
    slot: int
    container: str
    state: str
    exit_code: int | None
    stop_seconds: float | None
    logs: str = ""


class StopWatch:
    """Follow the ``kill`` and ``die`` events of one service's containers, in a thread.

    .. versionadded:: 0.1
    """

    def __init__(self, client: Any, service_id: str) -> None:
        self._events = client.events(
            filters={
                "type": "container",
                "event": ["kill", "die"],
                "label": f"{SERVICE_ID_LABEL}={service_id}",
            },
            decode=True,
        )
        self._lock = threading.Lock()
        self._signalled: dict[str, float] = {}
        self._stops: dict[str, ContainerStop] = {}
        self._thread = threading.Thread(target=self._follow, name="swarm-events", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        # The stream ends when close() closes it (an error from the closed socket ends it too).
        with contextlib.suppress(Exception):
            for event in self._events:
                actor = event.get("Actor") or {}
                cid = str(actor.get("ID") or event.get("id") or "")
                attributes = actor.get("Attributes") or {}
                when = int(event.get("timeNano") or 0) / _NS
                with self._lock:
                    if event.get("Action") == "kill":
                        self._signalled.setdefault(cid, when)
                    elif event.get("Action") == "die":
                        code = attributes.get("exitCode")
                        slot = attributes.get("com.docker.swarm.task.name", "").rsplit(".", 2)
                        self._stops[cid] = ContainerStop(
                            container=cid,
                            signalled=self._signalled.get(cid),
                            died=when,
                            exit_code=int(code) if code is not None else None,
                            slot=int(slot[1]) if len(slot) == 3 and slot[1].isdigit() else 0,
                        )

    def stops(self, since: float) -> dict[str, ContainerStop]:
        """Container id → its stop, for the containers that exited at or after ``since``."""
        with self._lock:
            return {c: s for c, s in self._stops.items() if s.died >= since}

    def close(self) -> None:
        """Stop following (the thread ends with the stream)."""
        with contextlib.suppress(Exception):
            self._events.close()
        self._thread.join(timeout=5.0)


def stopped_tasks(
    tasks: list[dict[str, Any]],
    known: set[str],
    watch: StopWatch,
    since: float,
    logs: Callable[[str], str],
) -> list[StoppedTask]:
    """The tasks an update or a scale-down stopped: from ``tasks`` (a service's, as Swarm
    lists them) those no longer wanted and not ``known`` (stopped before), with the exit code
    Swarm recorded; then the containers ``watch`` saw exit since ``since`` that no task lists
    any more (a scale-down removes its tasks), with the exit code the engine recorded.
    """
    stops = watch.stops(since)
    out: list[StoppedTask] = []
    listed: set[str] = set()
    for task in sorted(tasks, key=lambda t: str(t["Status"].get("Timestamp"))):
        status = task["Status"]
        container = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
        listed.add(container)
        if task["ID"] in known or task.get("DesiredState") == "running":
            continue
        code = (status.get("ContainerStatus") or {}).get("ExitCode")
        stop = stops.get(container)
        out.append(
            StoppedTask(
                task=str(task["ID"]),
                slot=int(task.get("Slot") or 0),
                container=container,
                state=str(status.get("State")),
                exit_code=int(code) if code is not None else None,
                stop_seconds=stop.seconds if stop is not None else None,
                logs=logs(container),
            )
        )
    for container, stop in stops.items():
        if container not in listed:
            out.append(
                StoppedTask(
                    task="(removed)",
                    slot=stop.slot,
                    container=container,
                    state="removed",
                    exit_code=stop.exit_code,
                    stop_seconds=stop.seconds,
                    logs=logs(container),
                )
            )
    return out

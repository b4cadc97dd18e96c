"""Who owns a harness run's objects, and whether that run is still going.

Every object a run creates carries, beside its run id, an owner label: the machine (host name
and boot id), the harness's process id and that process's start time. ``graceful harness
clean`` removes only the objects of runs that are over: their process is gone, or is another
process that got the same pid, or the machine has rebooted since. A run on another machine
(or in another container), or of a harness too old to label its owner, cannot be told from
here, so its objects are kept unless asked (``clean --all``).
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path

__all__ = ["OWNER_LABEL", "RunState", "owner", "run_state"]

OWNER_LABEL = "graceful.harness.owner"


class RunState(StrEnum):
    """Whether the run that labelled an object is still going.

    .. versionadded:: 0.1
    """

    ALIVE = "alive"  # its harness process runs on this machine
    OVER = "over"  # it ended
    UNKNOWN = "unknown"  # another machine's (or container's) run, or an older harness's


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    which tells a process from a later one that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rsplit(")", 1)[1].split()[19]


def owner(pid: int | None = None) -> str:
    """This process's owner label value: ``host/boot id/pid/start time``.

    .. versionadded:: 0.1
    """
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid) or '-'}"


def run_state(label: str | None) -> RunState:
    """Whether the run whose owner label is ``label`` is still going.

    .. versionadded:: 0.1
    """
    if not label:
        # Labelled by a harness from before owners were recorded, which may still be running
        # in another terminal: it cannot be told, so only `clean --all` removes it.
        return RunState.UNKNOWN
    try:
        host, boot, pid_text, started = label.split("/")
        pid = int(pid_text)
    except ValueError:
        return RunState.UNKNOWN
    if host != socket.gethostname():
        return RunState.UNKNOWN
    if boot != _boot_id():
        return RunState.OVER  # the machine rebooted: every process of that boot is gone
    now = _start_time(pid)
    return RunState.ALIVE if now is not None and now == started else RunState.OVER

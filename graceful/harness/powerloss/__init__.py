"""A crash-simulating volume: a FUSE file system that drops what was not fsynced on a power cut.

``model.py`` keeps what a disk would hold (the durability model), ``fs.py`` is the FUSE file
system (run as a child process), ``mount.py`` mounts, cuts and unmounts it. The model, what it
can and cannot simulate, and what it needs on the host: docs/power-loss.md.
"""

from __future__ import annotations

from graceful.harness.powerloss.model import CutReport, Pending
from graceful.harness.powerloss.mount import (
    PowerLossError,
    PowerLossVolume,
    is_mounted,
    unavailable,
    unmount_lazily,
)

__all__ = [
    "CutReport",
    "Pending",
    "PowerLossError",
    "PowerLossVolume",
    "is_mounted",
    "unavailable",
    "unmount_lazily",
]

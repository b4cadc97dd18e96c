"""Whether the store's path still names the file it opened.

SQLite writes through the descriptors it opened. When the file is deleted (an entrypoint or
a sidecar wiping the volume) or replaced (a backup renamed over it), every later commit still
succeeds, into a file nobody can open again: acknowledged, then gone at the next start. So
the writer compares the path's device and inode with the ones it opened before it
acknowledges a batch (one ``stat`` of the file and one of its ``-wal`` per committed batch,
not per write), and the store refuses every later call once they differ.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from prometheus_client import Counter

from graceful.exceptions import StateError
from graceful.state.events import StateLog

__all__ = ["FileLost", "OpenedFile"]

# The write-ahead log holds every commit since the last checkpoint: deleted alone, it takes
# acknowledged writes with it at the next SIGKILL. SQLite keeps it (same inode) while any
# connection is open, so its identity is as stable as the database file's.
_WAL: Final = "-wal"


class FileLost(StateError):
    """The store's file was deleted or replaced while open: nothing written since is stored."""


def _identity(name: str) -> tuple[int, int]:
    st = os.stat(name)
    return (st.st_dev, st.st_ino)


class OpenedFile:
    """The device and inode of a store's file and ``-wal`` as opened, and a check of both.

    Args:
        path: the store's path.
        lost_counter: counts the stores that found their file gone (once per opening).
    """

    def __init__(self, path: str, lost_counter: Counter) -> None:
        self.path = path
        self._counter = lost_counter
        self._ids: list[tuple[str, tuple[int, int]]] = []
        self._lock = threading.Lock()
        #: Set once the file is found deleted or replaced; never cleared for this opening.
        self.lost: FileLost | None = None

    def record(self) -> None:
        """Remember what the path names now (call right after opening, file and log exist)."""
        ids = [(self.path, _identity(self.path))]
        wal = self.path + _WAL
        try:
            ids.append((wal, _identity(wal)))
        except FileNotFoundError:
            pass  # no log to watch (the database is not in WAL mode yet); the file still is
        self._ids = ids

    def check(self) -> FileLost | None:
        """The error to refuse with if the path no longer names the opened file, else None.

        The first time it finds the file gone, it logs ``state.file_lost`` (an error) and
        counts it; later calls return the same error quietly.
        """
        if self.lost is not None:
            return self.lost
        for name, opened in self._ids:
            try:
                now = _identity(name)
            except OSError as exc:
                # Missing, or the directory became unreadable: either way nothing can show
                # that what we write is where the next start will look for it.
                what = "deleted" if isinstance(exc, FileNotFoundError) else f"unreachable ({exc})"
                return self._lose(name, what)
            if now != opened:
                return self._lose(
                    name, f"replaced by another file (device/inode {opened} -> {now})"
                )
        return None

    def _lose(self, name: str, what: str) -> FileLost:
        with self._lock:
            if self.lost is None:
                self.lost = FileLost(
                    f"state store {self.path}: {name} was {what} while the store was open; "
                    "what it held is not at that path any more, and the store refuses every call "
                    "until it is opened again"
                )
                self._counter.inc()
                StateLog().error("state.file_lost", path=self.path, error=str(self.lost))
            return self.lost

"""What a power cut leaves of a directory tree: the durability model of the power-loss volume.

The backing directory always holds the *live* state, what every process sees (the page cache
of a real machine). This module keeps just enough to rebuild the *durable* state from it, what
a disk would still hold after the power went out:

- **File contents.** For each file written since its last ``fsync``/``fdatasync``: its size at
  that sync and the synced bytes of every 4 KiB page changed since (saved just before the first
  change, so a page that is never touched costs nothing). A file missing from the table is
  durable as it is. A new file's durable content is empty.
- **Directory listings.** For each directory changed since its last ``fsync`` (a name created,
  removed, renamed or linked): its listing at that sync, taken just before the first change.
  A directory missing from the table is durable as it is.

``cut()`` rebuilds the tree from the root's durable listing: each directory gets its synced
listing, each file its synced content. Files and directories are known by inode number, which
stays the same across renames; an inode still named in a synced listing keeps an extra hard
link (files) or an open descriptor (directories) after its last live name goes, so it cannot be
freed and its number reused before the cut.

Callers hold one lock around each change and its ``before_*`` call (see ``fs.py``).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PAGE", "CutReport", "Durability", "Pending"]

PAGE = 4096  # the unit in which unsynced file data is dropped (a page of the page cache)


@dataclass(slots=True)
class _SyncedFile:
    """A file changed since its last sync: what the sync left on disk."""

    size: int
    pages: dict[int, bytes] = field(default_factory=dict)  # page index -> synced bytes


@dataclass(frozen=True, slots=True)
class _Entry:
    """A name in a synced directory listing: the inode it named and, for a directory, how to
    make it again if it is gone by the cut."""

    ino: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Pending:
    """What a power cut would drop now, as paths relative to the volume's root.

    Attributes:
        files: files with data or a size change not yet fsynced.
        directories: directories with names created, removed or renamed and not yet fsynced
            (``"."`` is the root).

    .. versionadded:: 0.1
    """

    files: tuple[str, ...]
    directories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CutReport:
    """What a power cut changed, as paths relative to the volume's root.

    Attributes:
        reverted: files whose content or size went back to the last sync.
        removed: names that disappeared (created or renamed into place since their
            directory's last sync).
        restored: names that came back (removed or renamed away since that sync).

    .. versionadded:: 0.1
    """

    reverted: tuple[str, ...]
    removed: tuple[str, ...]
    restored: tuple[str, ...]


def _entry(st: os.stat_result) -> _Entry:
    return _Entry(st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)


def _listing(path: str) -> dict[str, _Entry]:
    with os.scandir(path) as it:
        return {e.name: _entry(e.stat(follow_symlinks=False)) for e in it}


class Durability:
    """The synced state of the tree under ``root``, kept as the changes happen.

    Args:
        root: the backing directory (the live state).
        trash: an empty directory on the same file system as ``root``, outside it, for the
            inodes that lost their last live name but are still named in a synced listing.

    .. versionadded:: 0.1
    """

    def __init__(self, root: str, trash: str) -> None:
        self.root = root
        self.trash = trash
        self._root_ino = os.lstat(root).st_ino
        self._files: dict[int, _SyncedFile] = {}
        self._dirs: dict[int, dict[str, _Entry]] = {}
        self._trashed: set[int] = set()
        self._held: list[int] = []  # descriptors of removed directories still in a listing

    # -- file contents ------------------------------------------------------------------

    def created(self, fd: int) -> None:
        """A new file: until it is synced, its durable content is empty."""
        self._files[os.fstat(fd).st_ino] = _SyncedFile(size=0)

    def before_write(self, fd: int, offset: int, length: int) -> None:
        """Save the synced bytes of the pages that ``pwrite(fd, length bytes, offset)`` will
        change. ``fd`` must be readable."""
        if length <= 0:
            return
        synced = self._synced(fd)
        last = min((offset + length - 1) // PAGE, (synced.size - 1) // PAGE)
        self._save_pages(fd, synced, offset // PAGE, last)

    def before_truncate(self, fd: int, length: int) -> None:
        """Save the synced bytes that ``ftruncate(fd, length)`` will cut off."""
        synced = self._synced(fd)
        if length < synced.size:
            self._save_pages(fd, synced, length // PAGE, (synced.size - 1) // PAGE)

    def before_allocate(self, fd: int) -> None:
        """``fallocate`` (mode 0) changes no byte already there, only maybe the size."""
        self._synced(fd)

    def synced(self, fd: int) -> None:
        """``fsync``/``fdatasync``: the file's content and size are durable as they are."""
        self._files.pop(os.fstat(fd).st_ino, None)

    def _synced(self, fd: int) -> _SyncedFile:
        st = os.fstat(fd)
        found = self._files.get(st.st_ino)
        if found is None:
            found = self._files[st.st_ino] = _SyncedFile(size=st.st_size)
        return found

    @staticmethod
    def _save_pages(fd: int, synced: _SyncedFile, first: int, last: int) -> None:
        for page in range(first, last + 1):
            if page not in synced.pages:
                start = page * PAGE
                synced.pages[page] = os.pread(fd, min(PAGE, synced.size - start), start)

    # -- directory listings -------------------------------------------------------------

    def before_change(self, directory: str) -> None:
        """Remember ``directory``'s synced listing before a name in it changes."""
        ino = os.lstat(directory).st_ino
        if ino not in self._dirs:
            self._dirs[ino] = _listing(directory)

    def before_remove(self, path: str) -> None:
        """``path`` loses its name (unlink, rmdir, or replaced by a rename): keep its inode
        alive if a synced listing still names it. Call ``before_change`` on its parent first."""
        st = os.lstat(path)
        if not any(e.ino == st.st_ino for listing in self._dirs.values() for e in listing.values()):
            return  # created since the last sync of every directory that names it
        if stat.S_ISDIR(st.st_mode):
            self._held.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        elif st.st_ino not in self._trashed:
            os.link(path, os.path.join(self.trash, str(st.st_ino)), follow_symlinks=False)
            self._trashed.add(st.st_ino)

    def dir_synced(self, fd: int) -> None:
        """``fsync`` on a directory (``fd`` open on it): its listing is durable as it is."""
        self._dirs.pop(os.fstat(fd).st_ino, None)

    # -- the cut ------------------------------------------------------------------------

    def pending(self) -> Pending:
        """What a cut would drop now."""
        paths = self._paths()

        def live(inodes: Iterable[int]) -> tuple[str, ...]:
            found = (paths[i] for i in inodes if i in paths)
            return tuple(sorted(self._rel(p) for p in found if self._inside(p)))

        return Pending(files=live(self._files), directories=live(self._dirs))

    def cut(self) -> CutReport:
        """Turn the backing directory into what the disk would hold after a power cut.

        Afterwards everything in it counts as synced: the model starts afresh, as a machine
        does when it boots.
        """
        paths = self._paths()
        before = self._names()
        reverted = tuple(sorted(self._revert_files(paths)))
        staging = Path(self.trash) / ".rebuilt"
        staging.mkdir()
        self._build(self._root_ino, str(staging), paths, placed=set())
        for name in os.listdir(self.root):
            _remove(os.path.join(self.root, name))
        for name in os.listdir(staging):
            os.rename(staging / name, os.path.join(self.root, name))
        staging.rmdir()
        after = self._names()
        self.reset()
        return CutReport(
            reverted=tuple(r for r in reverted if r in after),
            removed=tuple(sorted(before - after)),
            restored=tuple(sorted(after - before)),
        )

    def reset(self) -> None:
        """Forget everything: the tree as it is counts as synced; the trash is emptied."""
        for fd in self._held:
            os.close(fd)
        self._held.clear()
        self._files.clear()
        self._dirs.clear()
        self._trashed.clear()
        for name in os.listdir(self.trash):
            _remove(os.path.join(self.trash, name))

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _paths(self) -> dict[int, str]:
        """Inode -> one live path, for everything under the root, then the trash."""
        paths: dict[int, str] = {}
        for top in (self.root, self.trash):
            for dirpath, dirnames, filenames in os.walk(top):
                paths.setdefault(os.lstat(dirpath).st_ino, dirpath)
                for name in filenames + dirnames:
                    path = os.path.join(dirpath, name)
                    paths.setdefault(os.lstat(path).st_ino, path)
        return paths

    def _names(self) -> set[str]:
        return {
            self._rel(os.path.join(dirpath, name))
            for dirpath, dirnames, filenames in os.walk(self.root)
            for name in dirnames + filenames
        }

    def _revert_files(self, paths: dict[int, str]) -> list[str]:
        reverted = []
        for ino, synced in self._files.items():
            path = paths.get(ino)
            if path is None:
                continue  # no name left live or synced: nothing on disk to revert
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                for page, data in synced.pages.items():
                    os.pwrite(fd, data, page * PAGE)
                os.ftruncate(fd, synced.size)
            finally:
                os.close(fd)
            if self._inside(path):
                reverted.append(self._rel(path))
        return reverted

    def _build(self, ino: int, into: str, paths: dict[int, str], placed: set[int]) -> None:
        """Fill ``into`` with the synced listing of directory ``ino``, recursively."""
        listing = self._dirs.get(ino)
        if listing is None:
            live = paths.get(ino)
            listing = _listing(live) if live is not None and os.path.isdir(live) else {}
        for name, entry in listing.items():
            target = os.path.join(into, name)
            if not stat.S_ISDIR(entry.mode):
                source = paths.get(entry.ino)
                if source is not None:  # always found: a synced name keeps its inode alive
                    os.link(source, target, follow_symlinks=False)
                continue
            if entry.ino in placed:
                continue  # renamed between two directories, each synced on its own side
            placed.add(entry.ino)
            os.mkdir(target)
            self._build(entry.ino, target, paths, placed)
            live = paths.get(entry.ino)
            meta = _entry(os.lstat(live)) if live is not None else entry
            os.chown(target, meta.uid, meta.gid)
            os.chmod(target, stat.S_IMODE(meta.mode))
            os.utime(target, ns=(meta.atime_ns, meta.mtime_ns))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)

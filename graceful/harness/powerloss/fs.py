"""The power-loss volume's FUSE file system: a pass-through to a backing directory that records
what is not synced yet (``model.py``) and drops it on a power cut.

It runs as its own process, started by :class:`graceful.harness.powerloss.PowerLossVolume`
(``mount.py``), as root: it creates files for other users (the service in a container runs as
uid 10001) and chowns them to the caller, and the kernel checks permissions
(``default_permissions``) against the ownership it reports. A separate process, because a
process that serves FUSE must never itself fault on a page of the mount it serves.

Control, one line each way on stdin/stdout: ``ready`` (printed once mounted), then
``cut`` -> a JSON `CutReport` (the file system is frozen from then on: every call fails with
EIO, as on a machine without power), ``pending`` -> a JSON `Pending`. End of stdin (the parent
is gone, or closed it) unmounts and exits.

Choices that make the kernel's view exact:

- No ``direct_io``: SQLite maps the ``-shm`` file shared, and the kernel refuses a shared
  mapping of a ``direct_io`` file, so WAL mode could not open (docs/power-loss.md).
- No writeback cache: each ``write(2)`` reaches this process before it returns, so a cut sees
  exactly what the processes wrote. Pages written through a shared mapping reach it when the
  kernel writes them back, at the latest on ``fsync``/``msync`` (which is all a disk would
  promise) or when the file is closed.
- ``hard_remove``: an unlinked file that is still open is really unlinked (libfuse would rename
  it to ``.fuse_hidden…`` otherwise, a rename the model would have to know about).
- No ``lock`` operation: POSIX locks stay in the kernel, where every process on the host sees
  them, which is what SQLite needs between processes.
- ``-s`` (one thread): every call holds the model's lock anyway.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import mfusepy as fuse  # type: ignore[import-untyped]

from graceful.harness.powerloss.model import Durability

__all__ = ["PowerLossFS", "main"]

F = TypeVar("F", bound=Callable[..., Any])

_WRITEBACK_CACHE = 1 << 16  # FUSE_CAP_WRITEBACK_CACHE in libfuse 3
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # special tv_nsec values
_STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_rdev")
_STATVFS_KEYS = (
    "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
    "f_files", "f_ffree", "f_favail", "f_namemax",
)  # fmt: skip


def _call(method: F) -> F:
    """Run one file system call under the model's lock; fail with EIO once frozen."""

    @functools.wraps(method)
    def run(self: PowerLossFS, *args: Any) -> Any:
        with self._lock:
            if self.frozen:
                raise fuse.FuseOSError(errno.EIO)
            return method(self, *args)

    return run  # type: ignore[return-value]


class PowerLossFS(fuse.Operations):  # type: ignore[misc]
    """Pass-through operations that keep `Durability` up to date.

    Args:
        model: the durability model of the backing directory.

    .. versionadded:: 0.1
    """

    use_ns = True  # times in integer nanoseconds, as os.stat gives them

    def __init__(self, model: Durability) -> None:
        self.model = model
        self._lock = threading.Lock()  # not `lock`: that name is a FUSE operation
        self.frozen = False
        self.stopping = False  # told to stop: the loop's exit is not a failure
        self._sync_writes: set[int] = set()  # handles opened O_SYNC/O_DSYNC

    def _path(self, path: str) -> str:
        return self.model.root + path.rstrip("/")

    def _parent(self, path: str) -> str:
        return self._path(os.path.dirname(path))

    def _own(self, path: str, fd: int | None = None) -> None:
        """Give a new file or directory to the caller, as the kernel would."""
        uid, gid, _pid = fuse.fuse_get_context()
        parent = os.lstat(os.path.dirname(path))
        if parent.st_mode & 0o2000:  # a set-group-ID directory hands its group down
            gid = parent.st_gid
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.lchown(path, uid, gid)

    # -- startup ------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        config.nullpath_ok = 1  # calls on an open, unlinked file come with its handle only
        conn.want &= ~_WRITEBACK_CACHE
        print("ready", flush=True)

    # -- metadata -----------------------------------------------------------------------

    @_call
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._path(path or "/"))
        attrs = {key: getattr(st, key) for key in _STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_call
    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    @_call
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        if fh is not None:
            os.fchmod(fh, mode)
        else:
            os.chmod(self._path(path or "/"), mode, follow_symlinks=False)
        return 0

    @_call
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        if fh is not None:
            os.fchown(fh, uid, gid)
        else:
            os.lchown(self._path(path or "/"), uid, gid)
        return 0

    @_call
    def utimens(
        self,
        path: str | None,
        times: tuple[int | None, int | None] | None = None,
        fh: int | None = None,
    ) -> int:
        target: int | str = fh if fh is not None else self._path(path or "/")
        follow = fh is not None  # os.utime takes follow_symlinks=False with a path only
        if times is None:
            os.utime(target, follow_symlinks=follow)
            return 0
        atime, mtime = times
        if atime is None or mtime is None:  # UTIME_OMIT: keep that one as it is
            st = os.stat(target, follow_symlinks=follow)
            atime = st.st_atime_ns if atime is None else atime
            mtime = st.st_mtime_ns if mtime is None else mtime
        os.utime(target, ns=(atime, mtime), follow_symlinks=follow)
        return 0

    @_call
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.model.root)
        return {key: getattr(st, key) for key in _STATVFS_KEYS}

    # -- names --------------------------------------------------------------------------

    def _new_name(self, path: str, make: Callable[[str], None]) -> int:
        full = self._path(path)
        self.model.before_change(self._parent(path))
        make(full)
        self._own(full)
        return 0

    @_call
    def mknod(self, path: str, mode: int, dev: int) -> int:
        return self._new_name(path, lambda full: os.mknod(full, mode, dev))

    @_call
    def mkdir(self, path: str, mode: int) -> int:
        return self._new_name(path, lambda full: os.mkdir(full, mode))

    @_call
    def symlink(self, path: str, target: str) -> int:
        return self._new_name(path, lambda full: os.symlink(target, full))

    @_call
    def link(self, path: str, existing: str) -> int:
        self.model.before_change(self._parent(path))
        os.link(self._path(existing), self._path(path), follow_symlinks=False)
        return 0

    @_call
    def unlink(self, path: str) -> int:
        full = self._path(path)
        self.model.before_change(self._parent(path))
        self.model.before_remove(full)
        os.unlink(full)
        return 0

    @_call
    def rmdir(self, path: str) -> int:
        full = self._path(path)
        if os.listdir(full):
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        self.model.before_change(self._parent(path))
        self.model.before_remove(full)
        os.rmdir(full)
        return 0

    @_call
    def rename(self, old: str, new: str) -> int:
        source, target = self._path(old), self._path(new)
        self.model.before_change(self._parent(old))
        self.model.before_change(self._parent(new))
        if os.path.lexists(target):
            self.model.before_remove(target)
        os.rename(source, target)
        return 0

    # -- file contents ------------------------------------------------------------------

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        # Writable handles are opened read-write: the model reads a page before its first
        # change. O_APPEND is left to the kernel, which sends each write with its offset.
        access = os.O_RDONLY if flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDWR
        fd = os.open(path, access | (flags & os.O_CREAT) | os.O_CLOEXEC, mode)
        if flags & (os.O_SYNC | os.O_DSYNC):
            self._sync_writes.add(fd)
        return fd

    def _open_existing(self, path: str, flags: int) -> int:
        fd = self._open(path, flags & ~os.O_CREAT)
        if flags & os.O_TRUNC:
            self._truncate(fd, 0)
        return fd

    @_call
    def open(self, path: str, flags: int) -> int:
        return self._open_existing(self._path(path), flags)

    @_call
    def create(self, path: str, mode: int, flags: int) -> int:
        full = self._path(path)
        if os.path.lexists(full):
            if flags & os.O_EXCL:
                raise fuse.FuseOSError(errno.EEXIST)
            return self._open_existing(full, flags)
        self.model.before_change(self._parent(path))
        fd = self._open(full, flags | os.O_CREAT, stat.S_IMODE(mode))
        self._own(full, fd)
        os.fchmod(fd, stat.S_IMODE(mode))  # chown may clear set-ID bits; the creator asked for them
        self.model.created(fd)
        return fd

    @_call
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @_call
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self.model.before_write(fh, offset, len(data))
        written = os.pwrite(fh, data, offset)
        if fh in self._sync_writes:
            self.model.synced(fh)
        return written

    def _truncate(self, fd: int, length: int) -> None:
        self.model.before_truncate(fd, length)
        os.ftruncate(fd, length)

    @_call
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None:
            self._truncate(fh, length)
            return 0
        fd = os.open(self._path(path or "/"), os.O_RDWR | os.O_CLOEXEC)
        try:
            self._truncate(fd, length)
        finally:
            os.close(fd)
        return 0

    @_call
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:  # punching holes or zeroing ranges would need the old bytes saved
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        self.model.before_allocate(fh)
        os.posix_fallocate(fh, offset, size)
        return 0

    @_call
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        # The model is what makes data durable; the backing file needs no real fsync.
        self.model.synced(fh)
        return 0

    @_call
    def flush(self, path: str | None, fh: int) -> int:
        return 0

    @_call
    def release(self, path: str | None, fh: int) -> int:
        self._sync_writes.discard(fh)
        os.close(fh)
        return 0

    # -- directories --------------------------------------------------------------------

    @_call
    def opendir(self, path: str) -> int:
        return os.open(self._path(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @_call
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino, each entry needs its inode number: readdir(3) skips an entry of 0.
        here = os.fstat(fh)
        up = os.lstat(self._parent(path)) if path not in (None, "/") else here
        entries = [(".", here.st_ino, here.st_mode), ("..", up.st_ino, up.st_mode)]
        with os.scandir(fh) as it:
            entries += [(e.name, e.inode(), e.stat(follow_symlinks=False).st_mode) for e in it]
        return [(name, {"st_ino": ino, "st_mode": mode}, 0) for name, ino, mode in entries]

    @_call
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.model.dir_synced(fh)
        return 0

    @_call
    def releasedir(self, path: str | None, fh: int) -> int:
        os.close(fh)
        return 0

    # -- control ------------------------------------------------------------------------

    def control(self, lines: Any, out: Any) -> None:
        """Serve ``cut`` and ``pending`` from ``lines`` until they end."""
        for line in lines:
            command = line.strip()
            with self._lock:
                try:
                    if command == "cut":
                        self.frozen = True
                        reply: dict[str, Any] = asdict(self.model.cut())
                    elif command == "pending":
                        reply = asdict(self.model.pending())
                    else:
                        reply = {"error": f"unknown command {command!r}"}
                except Exception as exc:  # answered, so the parent is not left waiting
                    reply = {"error": f"{command} failed: {exc!r}"}
            print(json.dumps(reply), file=out, flush=True)


def _nanoseconds(ts: Any) -> int | None:
    """A ``struct timespec`` from ``utimensat``: nanoseconds, now, or ``None`` to leave as is."""
    if ts.tv_nsec == _UTIME_NOW:
        return time.time_ns()
    if ts.tv_nsec == _UTIME_OMIT:
        return None
    return int(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)


class _FUSE(fuse.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with two fixes for libfuse 3.

    - ``renameat2`` flags are refused instead of ignored: RENAME_NOREPLACE treated as a plain
      rename would overwrite, RENAME_EXCHANGE would lose a file. EINVAL makes callers such as
      ``mv`` fall back to ``rename``.
    - ``ftruncate``, ``fchmod``, ``fchown`` and ``futimens`` reach the operations with their
      file handle (mfusepy drops it): with ``nullpath_ok`` they come without a path.
    """

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        if flags:
            return -errno.EINVAL
        return super().rename_fuse_3(old, new, flags)  # type: ignore[no-any-return]

    def _decode(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return fip.contents.fh if fip else None

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(self._decode(path), length, self._fh(fip))  # type: ignore[no-any-return]

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(self._decode(path), mode, self._fh(fip))  # type: ignore[no-any-return]

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        # -1 ("leave as it is") arrives as the unsigned maximum.
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(self._decode(path), uid, gid, self._fh(fip))  # type: ignore[no-any-return]

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            times = (_nanoseconds(buf.contents.actime), _nanoseconds(buf.contents.modtime))
        return self.operations.utimens(self._decode(path), times, self._fh(fip))  # type: ignore[no-any-return]


def _serve_control(operations: PowerLossFS) -> None:
    # This thread must not take the signals that end the FUSE loop in the main thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    operations.control(sys.stdin, sys.stdout)
    operations.stopping = True
    os.kill(os.getpid(), signal.SIGTERM)  # stdin ended: leave the loop, which unmounts


def main(argv: list[str] | None = None) -> int:
    """Mount the file system and serve it until unmounted or told to stop (stdin ends)."""
    parser = argparse.ArgumentParser(prog="python -m graceful.harness.powerloss.fs")
    parser.add_argument("--root", required=True, help="backing directory")
    parser.add_argument("--trash", required=True, help="empty directory beside it")
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("-o", dest="options", action="append", default=[], help="FUSE option")
    args = parser.parse_args(argv)
    os.umask(0)  # the kernel has applied the caller's umask already
    model = Durability(os.path.realpath(args.root), os.path.realpath(args.trash))
    model.reset()
    operations = PowerLossFS(model)
    options: dict[str, Any] = {"fsname": f"powerloss:{model.root}", "subtype": "powerloss"}
    for option in ["default_permissions", "use_ino", "hard_remove", *args.options]:
        key, _, value = option.partition("=")
        options[key] = value or True
    threading.Thread(target=_serve_control, args=(operations,), daemon=True).start()
    try:
        _FUSE(operations, args.mountpoint, foreground=True, nothreads=True, **options)
    except RuntimeError:
        if not operations.stopping:  # libfuse reports its exit on a signal as an error
            raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mount, cut and unmount the power-loss volume; the mount never outlives its owner.

`PowerLossVolume` starts the file system (``fs.py``) as a child process and talks to it over
its stdin/stdout. A power cut freezes it (every later call fails with EIO), rebuilds the
backing directory as a disk would hold it, then unmounts it and mounts a fresh one at the same
place: the kernel's caches go with the old mount, as they go with a machine's memory, and
whatever still had a file open there gets errors, as on a machine that died.

The mount is removed on every way out: leaving the ``with`` block (also by an exception or
Ctrl-C), and, if this process dies without cleaning up, by the child itself when its stdin
ends.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from graceful.exceptions import GracefulError
from graceful.harness.powerloss.model import CutReport, Pending

__all__ = ["PowerLossError", "PowerLossVolume", "is_mounted", "unavailable", "unmount_lazily"]


class PowerLossError(GracefulError):
    """The power-loss volume cannot be mounted, cut or unmounted; the message says why.

    .. versionadded:: 0.1
    """


def unavailable() -> str | None:
    """Why a power-loss volume cannot be mounted here, or ``None`` when it can.

    .. versionadded:: 0.1
    """
    if sys.platform != "linux":
        return "FUSE volumes need Linux"
    if os.geteuid() != 0:
        return "the power-loss volume must be mounted as root (it creates files for other users)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened ({exc.strerror}): no FUSE in this kernel or container"
    if importlib.util.find_spec("mfusepy") is None:
        return "the mfusepy package is missing: pip install 'graceful-stop[harness]'"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse 3 is missing: apt-get install fuse3 (or bash docker/host-tools.sh)"
    return None


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether something is mounted at ``path`` in this mount namespace.

    .. versionadded:: 0.1
    """
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == target for line in f)


class PowerLossVolume:
    """A directory that loses what was not fsynced when the power is cut.

    Mounted at ``mountpoint``, it passes every read and write through to ``backing``. `cut`
    drops what a power cut would: file data and sizes not fsynced (``fsync``/``fdatasync``,
    or a write through an ``O_SYNC``/``O_DSYNC`` descriptor), and names created, removed or
    renamed since their directory's last ``fsync``. Needs root, ``/dev/fuse``, libfuse 3
    and the ``mfusepy`` package (see `unavailable`).

    ```python
    with PowerLossVolume("/tmp/vol/backing", "/tmp/vol/mnt") as volume:
        ...  # run a service with its state under /tmp/vol/mnt (docker run -v /tmp/vol/mnt:/data)
        report = volume.cut()  # the power goes out; the volume is mounted afresh
        ...  # start the service again on the same volume and check what it kept
    ```

    Args:
        backing: the directory that holds the files (created if missing); must not be inside
            ``mountpoint``. A scratch directory for removed files is made beside it.
        mountpoint: where the volume appears (created if missing).
        allow_other: let every user in, not only root (the kernel still checks permissions
            against each file's owner and mode).
        options: more FUSE mount options, such as ``"direct_io"`` (which breaks SQLite's WAL
            mode: docs/power-loss.md).
        timeout: seconds to wait for the file system to mount, answer or exit.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        backing: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        allow_other: bool = True,
        options: tuple[str, ...] = (),
        timeout: float = 30.0,
    ) -> None:
        self.backing = Path(os.path.realpath(backing))
        self.mountpoint = Path(os.path.realpath(mountpoint))
        for inner, outer in ((self.backing, self.mountpoint), (self.mountpoint, self.backing)):
            if inner == outer or outer in inner.parents:
                raise PowerLossError(f"{inner} must not be inside {outer}")
        self._options = (("allow_other",) if allow_other else ()) + tuple(options)
        self._timeout = timeout
        self._trash: Path | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._buffer = b""

    @property
    def mounted(self) -> bool:
        """Whether the file system is mounted and serving."""
        return self._child is not None

    @property
    def pid(self) -> int | None:
        """The process id of the file system serving the mount (a new one after each cut)."""
        return None if self._child is None else self._child.pid

    def __enter__(self) -> Self:
        self.mount()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()

    def mount(self) -> None:
        """Mount the volume; everything already in ``backing`` counts as synced.

        Raises:
            PowerLossError: FUSE is unavailable here, or the mount failed (the file system's
                own error is in the message). Nothing is left mounted.
        """
        if self._child is not None:
            raise PowerLossError(f"{self.mountpoint}: already mounted")
        reason = unavailable()
        if reason is not None:
            raise PowerLossError(reason)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        trash = tempfile.mkdtemp(prefix=f".{self.backing.name}.powerloss-", dir=self.backing.parent)
        self._trash = Path(trash)
        try:
            if os.stat(trash).st_dev != os.stat(self.backing).st_dev:
                raise PowerLossError(f"{self.backing}: must not be a mount point itself")
            self._start()
        except BaseException:
            self.unmount()
            raise

    def unmount(self) -> None:
        """Unmount the volume, keeping ``backing`` as the processes left it. Safe to repeat.

        Raises:
            PowerLossError: the mount point is still mounted afterwards.
        """
        try:
            self._stop()
        finally:
            if self._trash is not None:
                shutil.rmtree(self._trash, ignore_errors=True)
                self._trash = None

    def pending(self) -> Pending:
        """What a cut would drop now."""
        return Pending(**self._ask("pending"))

    def cut(self) -> CutReport:
        """Cut the power: drop everything not synced, then mount the volume afresh.

        From the moment the file system gets the command, every call on the mount fails with
        EIO; files still open on it stay unusable after the remount. Stop (``docker kill``)
        the processes that use it just before or just after.

        Returns:
            What the cut changed.

        Raises:
            PowerLossError: the file system did not answer, or the new mount failed (then
                nothing is mounted).
        """
        report = CutReport(**self._ask("cut"))
        try:
            self._stop()
            self._start()
        except BaseException:
            self._stop()
            raise
        return report

    # -- the child process ----------------------------------------------------------------

    def _start(self) -> None:
        assert self._trash is not None
        command = [
            sys.executable, "-m", "graceful.harness.powerloss.fs",
            "--root", str(self.backing), "--trash", str(self._trash),
            "--mountpoint", str(self.mountpoint),
        ]  # fmt: skip
        for option in self._options:
            command += ["-o", option]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _stop, after this call)
        self._buffer = b""
        self._child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "FUSE_LIBRARY_NAME": os.environ.get("FUSE_LIBRARY_NAME", "fuse3")},
            start_new_session=True,  # Ctrl-C reaches this process, which unmounts in order
        )
        if self._read_line() != "ready":
            raise PowerLossError(f"{self.mountpoint}: mount failed: {self._stderr()}")

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            assert child.stdin is not None
            assert child.stdout is not None
            try:
                child.stdin.close()  # the file system unmounts and exits when stdin ends
                child.wait(self._timeout)
            except BaseException:
                child.kill()  # the kernel ends a FUSE connection whose server is gone
                child.wait()
                raise
            finally:
                child.stdout.close()
                if self._log is not None:
                    self._log.close()
                    self._log = None
        if is_mounted(self.mountpoint):
            unmount_lazily(self.mountpoint)

    def _ask(self, command: str) -> dict[str, tuple[str, ...]]:
        child = self._child
        if child is None or child.stdin is None:
            raise PowerLossError(f"{self.mountpoint}: not mounted")
        try:
            child.stdin.write(command.encode() + b"\n")
            child.stdin.flush()
        except BrokenPipeError:
            pass  # the answer (none) says the same, with the file system's error
        line = self._read_line()
        if line is None:
            raise PowerLossError(f"{self.mountpoint}: no answer to {command!r}: {self._stderr()}")
        reply = json.loads(line)
        if "error" in reply:
            raise PowerLossError(f"{self.mountpoint}: {reply['error']}")
        return {key: tuple(value) for key, value in reply.items()}

    def _read_line(self) -> str | None:
        """The child's next line, or ``None`` if it ended or did not answer in time."""
        assert self._child is not None
        assert self._child.stdout is not None
        fd = self._child.stdout.fileno()
        deadline = time.monotonic() + self._timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _stderr(self) -> str:
        if self._log is None:
            return "(no output)"
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-2000:] or "(no output)"


def unmount_lazily(mountpoint: str | os.PathLike[str]) -> None:
    """Detach whatever is mounted at ``mountpoint`` (``fusermount3 -u -z``, else
    ``umount -l``); processes that still use it get errors.

    Raises:
        PowerLossError: it is still mounted afterwards.

    .. versionadded:: 0.1
    """
    for command in (["fusermount3", "-u", "-z", "-q"], ["umount", "-l"]):
        if shutil.which(command[0]) is None:
            continue
        subprocess.run([*command, os.fspath(mountpoint)], check=False, capture_output=True)
        if not is_mounted(mountpoint):
            return
    raise PowerLossError(f"{mountpoint}: still mounted after a lazy unmount")

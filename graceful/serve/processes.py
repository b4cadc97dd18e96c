"""The supervisor's handle on one worker process: start it, hear from it, see it exit, kill it.

A worker is spawned (``python -m graceful.serve.worker``) or forked by the zygote
(:mod:`graceful.serve.zygote`) and handed to the supervisor; either way it is the supervisor's
child, whose status the supervisor collects.

A worker's exit is seen through a pidfd (``pidfd_open``, Linux 5.3) on the event loop: no
SIGCHLD handler (uvloop owns SIGCHLD) and no thread per child. Where pidfds are refused (an
old seccomp profile), a daemon thread waits for the child instead. The supervisor collects its
workers' statuses itself; the zombie reaper it runs as PID 1 only takes zombies left
uncollected for a whole sweep, which a worker never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from graceful.logs import lossy_output
from graceful.serve.control import ControlChannel, Message, Op, WorkerStart, send_start
from graceful.status import ExitCode

__all__ = ["ExitStatus", "WorkerProcess", "write_whole_lines"]


def write_whole_lines() -> None:
    """Make this process write each line of stdout and stderr with one ``write``, and never
    fail because nobody reads them any more.

    The supervisor and its workers share the container's stdout, a pipe, on which a write of
    up to 4 KiB is never interleaved with another process's. ``print`` writes a line's text
    and its newline separately when the stream writes through (``python -u``,
    ``PYTHONUNBUFFERED``, as containers often set), so two processes' JSON lines could mix;
    line buffering keeps each line whole and still flushes it at once.

    Both streams are then wrapped in :class:`~graceful.logs.LossyStream`: a log line is not
    worth a stop.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(Exception):  # a stream that cannot be reconfigured
                stream.reconfigure(line_buffering=True, write_through=False)
    lossy_output()


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a worker process ended: its exit code, or the signal that killed it.

    Attributes:
        returncode: as ``subprocess`` gives it: the exit code, or minus the signal number.
        killed_at_deadline: the supervisor killed it because it was not done at its deadline.
    """

    returncode: int
    killed_at_deadline: bool = False

    def describe(self) -> str:
        """``exit 0 (ok)``, ``exit 3 (work_cut)``, ``killed by SIGKILL``, ..."""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"killed by {name}" + (" at its deadline" if self.killed_at_deadline else "")
        try:
            return f"exit {self.returncode} ({ExitCode(self.returncode).name.lower()})"
        except ValueError:
            return f"exit {self.returncode}"

    @property
    def exit_code(self) -> ExitCode:
        """What this exit means for the container's exit code.

        A worker killed at its deadline overran it (what its own watchdog would have said); a
        code graceful does not use, or any other signal, is an error.
        """
        if self.killed_at_deadline:
            return ExitCode.OVERRAN
        if self.returncode < 0:
            return ExitCode.ERROR
        try:
            return ExitCode(self.returncode)
        except ValueError:
            return ExitCode.ERROR


class WorkerProcess:
    """One running worker, as the supervisor sees it.

    Build it with :meth:`spawn` or :meth:`forked` from a running event loop.

    Attributes:
        index: the worker's slot.
        pid: its process id.
        started_at: ``time.monotonic()`` when it was started.
        ready_at: when it said ``ready``, if it has.
        exited_at: when its exit was collected, once it was.
        exited: resolves to its :class:`ExitStatus` once it has exited and been collected.
    """

    def __init__(
        self,
        index: int,
        pid: int,
        control: socket.socket,
        poll: Callable[[], int | None],
        wait: Callable[[], int],
    ) -> None:
        self.index = index
        self.pid = pid
        self._poll = poll  # the exit code once collected, else None (never blocks)
        self._wait = wait  # blocks until collected (the thread fallback)
        self.returncode: int | None = None
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.on_ready: Callable[[WorkerProcess], None] = lambda _: None
        self.killed_at_deadline = False
        self.exited_at: float | None = None
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[ExitStatus] = loop.create_future()
        self.channel = ControlChannel(control, self._on_message, lambda: None)
        self.channel.attach()
        self._watch_exit(loop)

    @classmethod
    def forked(cls, index: int, pid: int, control: socket.socket) -> WorkerProcess:
        """The handle of a worker forked by the zygote and reparented to this process (its
        subreaper), which collects its status as a child's."""

        def poll() -> int | None:
            try:
                found, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # taken by someone else (a reaper): its code is lost
                return -signal.SIGKILL
            return None if found == 0 else os.waitstatus_to_exitcode(status)

        def wait() -> int:
            try:
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            except ChildProcessError:
                return -signal.SIGKILL

        return cls(index, pid, control, poll, wait)

    @classmethod
    def spawn(
        cls,
        start: WorkerStart,
        listener: socket.socket,
        *,
        env: Mapping[str, str],
        module: str = "graceful.serve.worker",
    ) -> WorkerProcess:
        """Start a worker process in its own session, sharing ``listener``.

        Raises:
            OSError: the process could not be started.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            sys.executable,
            "-m",
            module,
            "--listen-fd",
            str(listener.fileno()),
            "--control-fd",
            str(theirs.fileno()),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        try:
            popen = subprocess.Popen(
                argv,
                pass_fds=(listener.fileno(), theirs.fileno()),
                start_new_session=True,
                env=dict(env),
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        with contextlib.suppress(OSError):  # it died at once: its exit says why
            send_start(ours, start)
        return cls(start.index, popen.pid, ours, popen.poll, popen.wait)

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and not self.exited.done()

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def send(self, message: Message) -> bool:
        """Send a control message; False when the worker is gone."""
        return self.running and self.channel.send(message)

    def kill(self) -> None:
        """SIGKILL it at its deadline (its pid cannot be reused before we collect it)."""
        if self.running:
            self.killed_at_deadline = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _on_message(self, message: Message) -> None:
        if message.get("op") == Op.READY and self.ready_at is None:
            self.ready_at = time.monotonic()
            self.on_ready(self)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfds here: a thread waits instead
            threading.Thread(
                target=self._wait_in_thread, args=(loop,), name=f"wait-{self.pid}", daemon=True
            ).start()
            return

        def readable() -> None:
            code = self._poll()
            if code is None:
                return
            self.returncode = code
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._collected()

        loop.add_reader(pidfd, readable)

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self.returncode = self._wait()
        with contextlib.suppress(RuntimeError):  # the loop closed first
            loop.call_soon_threadsafe(self._collected)

    def _collected(self) -> None:
        self.channel.close()
        if not self.exited.done():
            self.exited_at = time.monotonic()
            code = self.returncode
            assert code is not None
            # Killed by us, not exited by itself just before the kill landed.
            status = ExitStatus(code, self.killed_at_deadline and code == -signal.SIGKILL)
            self.exited.set_result(status)

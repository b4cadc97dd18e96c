"""The supervisor's handle on its zygote (:mod:`graceful.serve.zygote`): start it, wait until
it has imported, ask it for workers, end it.

A fork is asked for and answered over the zygote's link while the supervisor's event loop
waits (a few milliseconds: the zygote forks twice and collects the intermediate process); the
wait for ``loaded`` (an import that can take seconds) runs on a thread instead, so that a stop
can come meanwhile and end the zygote's import (SIGTERM) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from graceful.serve.control import HEADER, MAX_FRAME, WorkerStart, encode, recv_exactly, send_start

__all__ = ["FORK_TIMEOUT", "Child", "Zygote", "become_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36
#: Seconds a fork may take before the zygote counts as gone (it takes milliseconds).
FORK_TIMEOUT = 10.0
#: Seconds the supervisor waits for the zygote's answer to a fork (milliseconds normally). It
#: waits on its event loop's thread, so a stuck zygote stalls the loop this long at most
#: (``/livez``, a stop) before it is taken for lost and workers are spawned.
FORK_ANSWER_TIMEOUT = 2.0


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (``PR_SET_CHILD_SUBREAPER``).

    A worker the zygote forks through an intermediate process is then handed to this process
    when the intermediate exits: the supervisor collects, and can kill without a pid race,
    forked workers as its own children. False where the kernel refuses.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Zygote:
    """The zygote process, as the supervisor sees it.

    Build it with :meth:`spawn`.

    Attributes:
        pid: the zygote's process id.
    """

    def __init__(self, popen: subprocess.Popen[bytes] | Child, link: socket.socket) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.link = link

    @classmethod
    def fork_here(cls) -> Zygote:
        """Fork the zygote from this process, which must have no other thread and no event
        loop yet: the zygote, and every worker it forks, then share this process's pages.

        Raises:
            OSError: the fork failed.
        """
        from graceful.serve import zygote  # the worker's modules: not the supervisor's to load

        # Imported before the fork, the modules every worker needs are in pages this process,
        # the zygote and every worker share: never written by the zygote (it waits), nor much
        # by this process (it never runs them).
        zygote.warm()
        # The collector of either process would otherwise write to every object's header,
        # copying the pages both share.
        gc.collect()
        gc.freeze()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        supervisor = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # not written twice, by both processes
                stream.flush()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            os.close(ours.detach())
            zygote.forked_from_supervisor(theirs, supervisor)
        theirs.close()
        return cls(Child(pid), ours)

    @classmethod
    def spawn(cls, *, env: Mapping[str, str]) -> Zygote:
        """Start the zygote as a fresh process in a session of its own.

        Raises:
            OSError: it could not be started.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            sys.executable,
            "-m",
            "graceful.serve.zygote",
            "--control-fd",
            str(theirs.fileno()),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        try:
            popen = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), start_new_session=True, env=dict(env)
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(popen, ours)

    def begin(self, start: WorkerStart, env: Mapping[str, str]) -> None:
        """Send its settings and the workers' environment: it starts importing."""
        with contextlib.suppress(OSError):  # it died at once: its exit says why
            send_start(self.link, start)
            self.link.sendall(encode({"op": "start", "env": dict(env)}))

    async def loaded(self) -> bool:
        """Wait until it has imported; False if it ended (or its link closed) first."""
        message = await asyncio.to_thread(self._read)
        return message is not None and message.get("op") == "loaded"

    def fork(self, index: int, listener: socket.socket, control: socket.socket) -> int:
        """Fork worker ``index`` with ``control`` (its end of its link) and ``listener``;
        return its pid (a child of this process from now on).

        Raises:
            OSError: the zygote is gone, did not answer in time, or could not fork.
        """
        body = json.dumps({"op": "fork", "index": index}).encode()
        self.link.settimeout(FORK_ANSWER_TIMEOUT)
        fds = [control.fileno(), listener.fileno()]
        socket.send_fds(self.link, [HEADER.pack(len(body)) + body], fds)
        reply = self._read()
        if reply is None:
            raise OSError("the zygote is gone")
        if reply.get("op") != "forked":
            raise OSError(f"the zygote could not fork: {reply.get('error')}")
        return int(reply["pid"])

    def close(self) -> None:
        """Close the link: the zygote exits (it forks nothing more)."""
        with contextlib.suppress(OSError):  # wakes a thread blocked reading it
            self.link.shutdown(socket.SHUT_RDWR)
        self.link.close()

    def terminate(self) -> None:
        """SIGTERM: ends an import in progress (``preload``) with exit 0."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """Its exit code, once it exited; SIGKILLed after ``timeout`` seconds."""
        try:
            return await asyncio.to_thread(self.popen.wait, max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return await asyncio.to_thread(self.popen.wait)

    def _read(self) -> dict[str, Any] | None:
        """One message from the zygote; None when the link ended."""
        try:
            header = recv_exactly(self.link, HEADER.size)
            (size,) = HEADER.unpack(header)
            if size > MAX_FRAME:
                return None
            message: dict[str, Any] = json.loads(recv_exactly(self.link, size))
        except (OSError, ValueError):
            return None
        return message


class Child:
    """A child forked by this process, with the part of ``subprocess.Popen``'s API a
    :class:`Zygote` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                found, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # collected by the zombie reaper
                self.returncode = 0
            else:
                if found:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["zygote"], timeout or 0.0)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not collected: the pid is still ours
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

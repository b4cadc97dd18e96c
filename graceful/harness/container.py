"""One container of the engine, and what the harness reads about images and processes.

:class:`Container` wraps the SDK's container object: the real ``docker stop`` (the stop
signal, the timeout, then SIGKILL; timed from the client's side), the real ``docker kill``,
its logs, its published ports, and its PID 1 as the host sees it (command line from
``docker top``, signal masks from ``/proc`` on a local engine). The value types here
(:class:`ImageInfo`, :class:`Pid1`, :class:`StopResult`) are what scenarios and judges reason
about; they need no engine to build.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graceful.exceptions import GracefulError

if TYPE_CHECKING:
    # The SDK ships no type information (and the repository's docker/ scripts directory
    # shadows the package name for mypy): its objects are typed as Any.
    DockerContainer = Any

__all__ = [
    "Container",
    "ContainerError",
    "ImageInfo",
    "Pid1",
    "StopResult",
    "log_lines",
    "signal_name",
    "signal_number",
    "signal_number_or_none",
    "stop_signal_of",
]

_SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"}
# What `docker run --init` (docker-init, which is tini) and its cousins look like as PID 1.
_INITS = {"docker-init", "tini", "dumb-init", "catatonit"}


class ContainerError(GracefulError, RuntimeError):
    """A container did not start, or did not become ready; the message carries its last logs.

    .. versionadded:: 0.1
    """


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the harness needs from ``docker image inspect``.

    Attributes:
        ref: the name the image was asked by.
        id: the image id.
        entrypoint: the configured ``ENTRYPOINT`` (empty when none).
        cmd: the configured ``CMD`` (empty when none).
        stop_signal: ``STOPSIGNAL`` as a name (``SIGTERM`` when the image sets none).

    .. versionadded:: 0.1
    """

    ref: str
    id: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    stop_signal: str

    @property
    def argv(self) -> tuple[str, ...]:
        """What the container runs: entrypoint followed by cmd."""
        return self.entrypoint + self.cmd

    @property
    def shell_form(self) -> bool:
        """Whether the image starts its process through ``/bin/sh -c`` (a shell-form
        ``CMD``/``ENTRYPOINT``), which leaves the shell as PID 1."""
        argv = self.argv
        return len(argv) >= 2 and _is_shell(argv[0]) and argv[1] == "-c"


@dataclass(frozen=True, slots=True)
class Pid1:
    """The container's PID 1, seen while it runs.

    Attributes:
        cmdline: its command line, as ``docker top`` shows it.
        caught: signal numbers it has handlers for (None when unknown: a remote engine).
        ignored: signal numbers it ignores (None when unknown).
        children: the command lines of its child processes, as ``docker top`` shows them.

    .. versionadded:: 0.1
    """

    cmdline: str
    caught: frozenset[int] | None = None
    ignored: frozenset[int] | None = None
    children: tuple[str, ...] = ()

    @property
    def is_shell(self) -> bool:
        """PID 1 is a shell (which does not forward signals to its children)."""
        first = self.cmdline.split(" ", 1)[0]
        return _is_shell(first)

    @property
    def shell_child(self) -> str | None:
        """The command line of a shell PID 1 started, when PID 1 is an init (``--init``):
        the init forwards the stop signal to that shell, which dies of it without passing
        it on."""
        first = os.path.basename(self.cmdline.split(" ", 1)[0])
        if first not in _INITS:
            return None
        return next((c for c in self.children if _is_shell(c.split(" ", 1)[0])), None)

    def handles(self, sig: int) -> bool | None:
        """Whether PID 1 installed a handler for ``sig``; None when unknown."""
        if self.caught is None:
            return None
        return sig in self.caught


@dataclass(frozen=True, slots=True)
class StopResult:
    """How a container ended.

    Attributes:
        exit_code: the container's exit code (137 after SIGKILL).
        seconds: from the stop/kill request to the container's exit, client side.
        oom_killed: the kernel's OOM killer ended it.
        finished_at: when the process ended, as the engine recorded it (Unix time; None when
            unknown). Finer than ``seconds``, which includes the engine's clean-up.

    .. versionadded:: 0.1
    """

    exit_code: int
    seconds: float
    oom_killed: bool = False
    finished_at: float | None = None

    def exited_at(self, began: float, began_wall: float) -> float:
        """When the process exited, on the monotonic clock of ``began`` (the stop request,
        also given as wall-clock ``began_wall``): the engine's record of the exit when it has
        one (the stop call returns later, after the engine's clean-up), else now."""
        now = time.monotonic()
        if self.finished_at is None:
            return now
        return min(now, began + max(self.finished_at - began_wall, 0.0))


def _is_shell(arg: str) -> bool:
    return os.path.basename(arg) in _SHELLS


def signal_number(name: str) -> int:
    """``"SIGTERM"``, ``"TERM"`` or ``"15"`` → 15.

    Raises:
        ValueError: not a signal name or number.
    """
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    return int(signal.Signals[text])


def signal_name(sig: int | str) -> str:
    """15 or ``"15"`` or ``"TERM"`` → ``"SIGTERM"`` (unknown numbers as ``"signal N"``)."""
    try:
        return signal.Signals(signal_number(str(sig))).name
    except (ValueError, KeyError):
        return f"signal {sig}"


def signal_number_or_none(sig: str) -> int | None:
    """:func:`signal_number`, or None for a name this platform does not know."""
    try:
        return signal_number(sig)
    except (KeyError, ValueError):
        return None


class Container:
    """A running (or exited) container, as :meth:`Engine.run <graceful.harness.engine.Engine.run>`
    started it.

    Args:
        raw: the SDK's container object.

    .. versionadded:: 0.1
    """

    def __init__(self, raw: DockerContainer) -> None:
        self.raw = raw
        self.id: str = str(raw.id)
        self.name: str = str(raw.name)

    def reload(self) -> None:
        """Refresh the container's state from the engine."""
        self.raw.reload()

    @property
    def attrs(self) -> dict[str, Any]:
        """``docker inspect`` output as of the last :meth:`reload`."""
        return dict(self.raw.attrs)

    @property
    def running(self) -> bool:
        """Whether the container runs (refreshes its state)."""
        import docker.errors

        try:
            self.reload()
        except docker.errors.NotFound:
            return False
        return bool(self.attrs["State"].get("Running"))

    @property
    def exit_code(self) -> int | None:
        """The exit code once it exited (refreshes its state), else None."""
        self.reload()
        state = self.attrs["State"]
        return None if state.get("Running") else int(state.get("ExitCode", -1))

    def host_port(self, port: int) -> int:
        """The 127.0.0.1 host port published for container port ``port``.

        Raises:
            ContainerError: the port is not published (or the container has exited).
        """
        bindings = (self.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for binding in bindings.get(f"{port}/tcp") or ():
            if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                return int(binding["HostPort"])
        raise ContainerError(f"port {port}/tcp of {self.name} is not published on 127.0.0.1")

    def stop(self, timeout: int) -> StopResult:
        """``docker stop -t timeout``: the stop signal, then SIGKILL after ``timeout`` s.

        Returns:
            The exit code and how long the stop took, client side.
        """
        started = time.monotonic()
        self.raw.stop(timeout=timeout)
        seconds = time.monotonic() - started
        return self._ended(seconds)

    def kill(self, sig: str = "SIGKILL") -> bool:
        """``docker kill --signal sig``.

        Returns:
            False when the container was no longer running, so nothing was sent.
        """
        import docker.errors

        try:
            self.raw.kill(signal=sig)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "is not running"
                return False
            raise
        return True

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the container to exit; its exit code, or None."""
        import requests.exceptions

        try:
            result = self.raw.wait(timeout=timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
            return None
        return int(result.get("StatusCode", -1))

    def wait_exit(self, started: float, timeout: float) -> StopResult | None:
        """Wait for the exit and time it from ``started`` (a monotonic time)."""
        code = self.wait(timeout)
        if code is None:
            return None
        return self._ended(time.monotonic() - started)

    def _ended(self, seconds: float) -> StopResult:
        self.reload()
        state = self.attrs["State"]
        return StopResult(
            exit_code=int(state.get("ExitCode", -1)),
            seconds=seconds,
            oom_killed=bool(state.get("OOMKilled")),
            finished_at=_parse_time(str(state.get("FinishedAt") or "")),
        )

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr."""
        data: bytes = self.raw.logs(stdout=True, stderr=True)
        return data.decode("utf-8", errors="replace")

    def pid1(self) -> Pid1 | None:
        """PID 1's command line and, on a local engine, which signals it handles or ignores.

        The command line comes from ``docker top`` (works with any engine); the signal masks
        from ``/proc/<pid>/status`` on this host, used only when that process's command line
        is the same one the engine reports (so a remote engine is never misread).
        """
        import docker.errors

        self.reload()
        host_pid = int(self.attrs["State"].get("Pid") or 0)
        if not host_pid:
            return None
        cmdline = ""
        children: list[str] = []
        try:
            top = self.raw.top(ps_args="-o pid,ppid,args")
            titles = [t.upper() for t in top.get("Titles", [])]
            pid_col, ppid_col = titles.index("PID"), titles.index("PPID")
            args_col = len(titles) - 1
            for row in top.get("Processes") or ():
                if int(row[pid_col]) == host_pid:
                    cmdline = str(row[args_col])
                elif int(row[ppid_col]) == host_pid:
                    children.append(str(row[args_col]))
        except (docker.errors.APIError, ValueError, IndexError):
            pass
        proc = Path("/proc") / str(host_pid)
        try:
            local = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            status = (proc / "status").read_text()
        except OSError:
            return Pid1(cmdline, children=tuple(children)) if cmdline else None
        if cmdline and local != cmdline.strip():
            return Pid1(cmdline, children=tuple(children))
        return Pid1(
            cmdline or local,
            caught=_mask(status, "SigCgt"),
            ignored=_mask(status, "SigIgn"),
            children=tuple(children),
        )

    def wait_handler(self, sig: int, timeout: float) -> Pid1 | None:
        """Wait until PID 1 handles ``sig`` (local engines only: PID 1's signal mask is read
        from ``/proc`` every few milliseconds).

        Returns:
            PID 1 as last seen; None when it cannot be seen. Returns at once when the masks
            are unknown (a remote engine), since waiting could not end sooner.
        """
        first = self.pid1()
        if first is None or first.caught is None or sig in first.caught:
            return first
        status = Path("/proc") / str(self.attrs["State"].get("Pid") or 0) / "status"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                caught = _mask(status.read_text(), "SigCgt")
            except OSError:  # PID 1 exited
                break
            # exec() (a wrapper that execs the server) changes the mask; re-read it all then.
            if caught is not None and sig in caught:
                break
            time.sleep(0.002)
        try:
            return self.pid1()
        except Exception:  # the container may have exited meanwhile
            return first


def _parse_time(text: str) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, ``Z``) as Unix time."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text)
    if match is None or text.startswith("0001-"):
        return None
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(match.group(2) or 0.0)


def _mask(status: str, field: str) -> frozenset[int] | None:
    match = re.search(rf"^{field}:\s*([0-9a-fA-F]+)$", status, re.MULTILINE)
    if match is None:
        return None
    bits = int(match.group(1), 16)
    return frozenset(n for n in range(1, 65) if bits & (1 << (n - 1)))


def stop_signal_of(container: Container, image: ImageInfo) -> str:
    """The signal ``docker stop`` sends this container (its config, else the image's)."""
    configured = (container.attrs.get("Config") or {}).get("StopSignal")
    return signal_name(configured) if configured else image.stop_signal


def log_lines(text: str, contains: str) -> Iterator[str]:
    """Lines of ``text`` that mention ``contains``."""
    return (line for line in text.splitlines() if contains in line)

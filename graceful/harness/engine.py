"""The Docker Engine, through the ``docker`` SDK: images, containers, volumes, cleanup.

Every object the harness creates carries the label ``graceful.harness=<run id>`` and is
removed when the :class:`Engine` closes, also when a scenario fails or the harness is
interrupted. Containers publish their ports on 127.0.0.1 only and never run privileged.

``stop`` is the real ``docker stop``: the engine sends the container's stop signal, waits
the timeout, then SIGKILLs; the call is timed from the client's side. ``kill`` is the real
``docker kill``.

The ``docker`` package is imported when an engine is first connected, so importing this
module (as the pytest plugin does in every run) stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from graceful.exceptions import GracefulError

if TYPE_CHECKING:
    # The SDK ships no type information (and the repository's docker/ scripts directory
    # shadows the package name for mypy): its objects are typed as Any.
    DockerClient = Any
    DockerContainer = Any

__all__ = [
    "LABEL",
    "Container",
    "ContainerError",
    "Engine",
    "EngineUnavailable",
    "ImageInfo",
    "Pid1",
    "StopResult",
    "connect",
]

LABEL = "graceful.harness"

HOW_TO_GET_AN_ENGINE = (
    "start one with `make engine` (docker/engine.sh), `sudo systemctl start docker` or Docker "
    "Desktop, or point DOCKER_HOST at one"
)

_SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"}


class EngineUnavailable(GracefulError, ConnectionError):
    """No Docker engine answered.

    .. versionadded:: 0.1
    """


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

    .. versionadded:: 0.1
    """

    cmdline: str
    caught: frozenset[int] | None = None
    ignored: frozenset[int] | None = None

    @property
    def is_shell(self) -> bool:
        """PID 1 is a shell (which does not forward signals to its children)."""
        first = self.cmdline.split(" ", 1)[0]
        return _is_shell(first)

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


def connect(*, timeout: float = 30.0) -> Engine:
    """Connect to the Docker engine named by the environment (``DOCKER_HOST`` or the default
    socket) and check that it answers.

    Args:
        timeout: seconds the SDK waits for an API answer (a stop adds its own timeout).

    Raises:
        EngineUnavailable: the ``docker`` package is missing or no engine answered; the
            message says how to get one.

    .. versionadded:: 0.1
    """
    try:
        docker = importlib.import_module("docker")
    except ImportError as exc:
        raise EngineUnavailable(
            "the harness needs the docker SDK: pip install 'graceful-stop[harness]'"
        ) from exc
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://"):
        # Check the socket first: the SDK leaks its socket when the engine is missing.
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(timeout)
                probe.connect(where.removeprefix("unix://"))
        except OSError as exc:
            raise EngineUnavailable(
                f"no Docker engine answers at {where} ({exc.strerror or exc}); "
                + HOW_TO_GET_AN_ENGINE
            ) from exc
    client = None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:  # the SDK raises requests/urllib3/OS errors of many kinds
        if client is not None:
            client.close()
        raise EngineUnavailable(
            f"no Docker engine answers at {where} ({exc.__class__.__name__}); "
            + HOW_TO_GET_AN_ENGINE
        ) from exc
    return Engine(client)


class Engine:
    """One harness run's view of the Docker engine; removes what it created on close.

    Use as a context manager (or call :meth:`close`). Objects are found for cleanup by their
    label, so a crashed run can be swept with :func:`sweep`.

    Args:
        client: a connected ``docker.DockerClient``.
        run_id: the label value for this run; a random one when omitted.

    .. versionadded:: 0.1
    """

    def __init__(self, client: DockerClient, *, run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._closed = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def labels(self) -> dict[str, str]:
        """Labels put on every object this run creates."""
        return {LABEL: self.run_id}

    def image(self, ref: str) -> ImageInfo:
        """Inspect a local image (nothing is pulled).

        Raises:
            ContainerError: no such image.
        """
        import docker.errors

        try:
            image = self.client.images.get(ref)
        except docker.errors.ImageNotFound as exc:
            raise ContainerError(
                f"no image {ref!r} on this engine (nothing is pulled): build it first, or pass "
                "--build PATH"
            ) from exc
        config = image.attrs.get("Config") or {}
        return ImageInfo(
            ref=ref,
            id=str(image.id),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            stop_signal=signal_name(config.get("StopSignal") or "SIGTERM"),
        )

    def build(
        self,
        path: str | Path,
        *,
        tag: str,
        dockerfile: str | None = None,
        buildargs: Mapping[str, str] | None = None,
    ) -> ImageInfo:
        """Build an image from a context directory (``docker build``) and tag it.

        Built images are kept (they are the user's artifact and the build cache); only
        containers and volumes are cleaned up.

        Args:
            path: the build context.
            tag: the name to give the image.
            dockerfile: the Dockerfile, relative to the context (``Dockerfile`` by default).
            buildargs: ``--build-arg`` values.

        Raises:
            ContainerError: the build failed; the message ends with the build's last lines.
        """
        import docker.errors

        try:
            self.client.images.build(
                path=str(path),
                tag=tag,
                dockerfile=dockerfile,
                buildargs=dict(buildargs or {}),
                rm=True,
                forcerm=True,
                labels=dict(self.labels),
            )
        except docker.errors.BuildError as exc:
            lines = [str(c.get("stream") or c.get("error") or "") for c in exc.build_log]
            tail = "".join(lines).strip().splitlines()[-10:]
            raise ContainerError(f"building {tag} failed: {exc.msg}\n" + "\n".join(tail)) from exc
        return self.image(tag)

    def volume(self) -> str:
        """Create a labelled named volume; return its name."""
        name = f"graceful-harness-{self.run_id}-{len(self._volumes) + 1}"
        self.client.volumes.create(name=name, labels=dict(self.labels))
        self._volumes.append(name)
        return name

    def run(
        self,
        image: str,
        *,
        ports: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        volumes: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        network_mode: str | None = None,
        init: bool = False,
        healthcheck: bool = True,
        name: str | None = None,
    ) -> Container:
        """Start a container (``docker run -d``), labelled for cleanup.

        Args:
            image: image name or id.
            ports: container TCP ports to publish on 127.0.0.1 (the host port is chosen by
                the engine; read it with :meth:`Container.host_port`).
            env: environment variables.
            volumes: named volume → mount path in the container.
            command: overrides the image's ``CMD``.
            entrypoint: overrides the image's ``ENTRYPOINT``.
            network_mode: e.g. ``container:<id>`` to share another container's network.
            init: run under Docker's init (``--init``, tini) instead of as PID 1.
            healthcheck: keep the image's ``HEALTHCHECK`` (False: ``--no-healthcheck``).
            name: container name; generated from the run id when omitted.
        """
        index = len(self._containers) + 1
        kwargs: dict[str, Any] = {
            "detach": True,
            "labels": dict(self.labels),
            "environment": dict(env or {}),
            "name": name or f"graceful-harness-{self.run_id}-{index}",
            "privileged": False,
            "init": init,
        }
        if ports:
            kwargs["ports"] = {f"{p}/tcp": ("127.0.0.1", None) for p in ports}
        if volumes:
            kwargs["volumes"] = {v: {"bind": path, "mode": "rw"} for v, path in volumes.items()}
        if command is not None:
            kwargs["command"] = list(command)
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if network_mode is not None:
            kwargs["network_mode"] = network_mode
        if not healthcheck:
            kwargs["healthcheck"] = {"test": ["NONE"]}
        raw = self.client.containers.run(image, **kwargs)
        self._containers.append(str(raw.id))
        container = Container(self, raw)
        container.reload()
        return container

    def close(self) -> None:
        """Remove every container and volume this run created (by id and by label)."""
        if self._closed:
            return
        self._closed = True
        try:
            sweep(self.client, run_id=self.run_id, extra_containers=self._containers)
        finally:
            self._volumes.clear()
            self._containers.clear()
            self.client.close()


def sweep(
    client: DockerClient,
    *,
    run_id: str | None = None,
    extra_containers: Sequence[str] = (),
) -> int:
    """Force-remove containers, volumes and networks labelled by the harness.

    Args:
        client: a connected ``docker.DockerClient``.
        run_id: only this run's objects; every harness run's when None.
        extra_containers: container ids to remove as well (in case a label filter misses).

    Returns:
        How many objects were removed.

    .. versionadded:: 0.1
    """
    import docker.errors

    selector = f"{LABEL}={run_id}" if run_id else LABEL
    removed = 0
    ids = set(extra_containers)
    with contextlib.suppress(docker.errors.APIError):
        ids.update(str(c.id) for c in client.containers.list(all=True, filters={"label": selector}))
    for cid in ids:
        # A stop that is still waiting in another thread returns once the container is gone.
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(cid, force=True, v=True)  # anonymous volumes too
            removed += 1
    with contextlib.suppress(docker.errors.APIError):
        for volume in client.volumes.list(filters={"label": selector}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)
                removed += 1
    with contextlib.suppress(docker.errors.APIError):
        for network in client.networks.list(filters={"label": selector}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()
                removed += 1
    return removed


class Container:
    """A running (or exited) container started by an :class:`Engine`.

    .. versionadded:: 0.1
    """

    def __init__(self, engine: Engine, raw: DockerContainer) -> None:
        self.engine = engine
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
        try:
            top = self.raw.top(ps_args="-o pid,args")
            titles = [t.upper() for t in top.get("Titles", [])]
            pid_col, args_col = titles.index("PID"), len(titles) - 1
            for row in top.get("Processes") or ():
                if int(row[pid_col]) == host_pid:
                    cmdline = str(row[args_col])
                    break
        except (docker.errors.APIError, ValueError, IndexError):
            pass
        proc = Path("/proc") / str(host_pid)
        try:
            local = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            status = (proc / "status").read_text()
        except OSError:
            return Pid1(cmdline) if cmdline else None
        if cmdline and local != cmdline.strip():
            return Pid1(cmdline)
        return Pid1(
            cmdline or local,
            caught=_mask(status, "SigCgt"),
            ignored=_mask(status, "SigIgn"),
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

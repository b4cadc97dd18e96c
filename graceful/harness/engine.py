"""The Docker Engine, through the ``docker`` SDK: images, containers, volumes, cleanup.

Every object the harness creates carries the label ``graceful.harness=<run id>`` and its
owner (:mod:`graceful.harness.runs`), and a name that starts with ``graceful-harness-<run id>-``;
it is removed when the :class:`Engine` closes, also when a scenario fails or the harness is
interrupted. A close first waits for the creations still on their way in other threads (a
cancelled ``asyncio.to_thread`` does not stop its thread: the container it creates would
outlive the clean-up), refuses new ones, removes by id, label and name, and then looks again:
its :class:`~graceful.harness.cleanup.Cleanup` says what was removed and what is still there
(removal itself: :mod:`graceful.harness.cleanup`, re-exported here).

The engine must be on this machine: containers are reached through ports published on its
127.0.0.1, and PID 1's signal masks are read from its ``/proc``. :func:`connect` refuses a
remote ``DOCKER_HOST`` with a message that says so, rather than reporting every scenario "not
ready". Containers publish their ports on 127.0.0.1 only and never run privileged. What one
container does (``docker stop``, ``docker kill``, logs, PID 1) is
:mod:`graceful.harness.container`.

The ``docker`` package is imported when an engine is first connected, so importing this
module (as the pytest plugin does in every run) stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from graceful.exceptions import ConfigError, GracefulError
from graceful.harness.cleanup import (
    LABEL,
    Cleanup,
    clean_up,
    leftovers,
    name_prefix,
    remove,
    sweep,
)
from graceful.harness.container import Container, ContainerError, ImageInfo, signal_name
from graceful.harness.runs import OWNER_LABEL, owner

if TYPE_CHECKING:
    # The SDK ships no type information (and the repository's docker/ scripts directory
    # shadows the package name for mypy): its objects are typed as Any.
    DockerClient = Any

__all__ = [
    "LABEL",
    "RUN_ID_VARIABLE",
    "Cleanup",
    "ContainerError",
    "Engine",
    "EngineUnavailable",
    "clean_up",
    "connect",
    "remote_engine",
    "remove",
    "sweep",
]

#: Names the run (its label and the start of its objects' names) instead of a random id.
RUN_ID_VARIABLE: Final = "GRACEFUL_HARNESS_RUN_ID"
_RUN_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
#: How long a close waits for creations still on their way (each is one or two API calls,
#: each bounded by the client's timeout).
CREATIONS_WAIT_S: Final = 75.0

HOW_TO_GET_AN_ENGINE = (
    "start one with `make engine` (docker/engine.sh), `sudo systemctl start docker` or Docker "
    "Desktop, or point DOCKER_HOST at one"
)


class EngineUnavailable(GracefulError, ConnectionError):
    """No Docker engine answered.

    .. versionadded:: 0.1
    """


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", ""}


def remote_engine(docker_host: str) -> str | None:
    """The engine's host when ``docker_host`` (a ``DOCKER_HOST`` value) names another machine,
    else None (a socket, or a TCP address on this machine's loopback).

    .. versionadded:: 0.1
    """
    if not docker_host or docker_host.startswith(("unix://", "npipe://", "fd://")):
        return None
    scheme, sep, rest = docker_host.partition("://")
    if not sep:
        rest, scheme = docker_host, "tcp"
    netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 or "]" in netloc else netloc
    if scheme == "ssh" or host.lower() not in _LOCAL_HOSTS:
        return host or docker_host
    return None


def connect(*, timeout: float = 30.0) -> Engine:
    """Connect to the Docker engine named by the environment (``DOCKER_HOST`` or the default
    socket) and check that it answers.

    Args:
        timeout: seconds the SDK waits for an API answer (a stop adds its own timeout).

    Raises:
        EngineUnavailable: the ``docker`` package is missing, ``DOCKER_HOST`` names another
            machine, or no engine answered; the message says what to do.
        ConfigError: ``GRACEFUL_HARNESS_RUN_ID`` is not a valid run id.

    .. versionadded:: 0.1
    """
    run_id = os.environ.get(RUN_ID_VARIABLE) or None
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"{RUN_ID_VARIABLE}={run_id!r}: a run id is 1 to 40 lower-case letters, digits, "
            "'_', '.' or '-', starting with a letter or digit (and unique to the run)"
        )
    remote = remote_engine(os.environ.get("DOCKER_HOST", ""))
    if remote is not None:
        raise EngineUnavailable(
            f"DOCKER_HOST={os.environ['DOCKER_HOST']} is an engine on another machine "
            f"({remote}); the harness reaches the containers it starts through ports published "
            "on 127.0.0.1 and reads their PID 1 from /proc, both on the engine's own machine: "
            "run the harness on that machine (e.g. over ssh), or unset DOCKER_HOST to use "
            "this machine's engine"
        )
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
    return Engine(client, run_id=run_id)


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
        self._owner = owner()
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._closed = False
        # Creations on their way (threads may outlive the coroutine that started them).
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._creating_now = 0
        self._named = 0
        self._closing = False
        #: What the close removed and found left; None until the engine is closed.
        self.cleanup: Cleanup | None = None

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
        """Labels put on every object this run creates: its run id and its owner."""
        return {LABEL: self.run_id, OWNER_LABEL: self._owner}

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

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        """Mark a creation on its way, which :meth:`close` waits for before it removes.

        Raises:
            ContainerError: the engine is closing: nothing new is created.
        """
        with self._lock:
            if self._closing:
                raise ContainerError(f"harness run {self.run_id} is ending: nothing new starts")
            self._creating_now += 1
        try:
            yield
        finally:
            with self._lock:
                self._creating_now -= 1
                self._idle.notify_all()

    def volume(self) -> str:
        """Create a labelled named volume; return its name."""
        with self.creating():
            with self._lock:
                name = f"{name_prefix(self.run_id)}{len(self._volumes) + 1}"
                self._volumes.append(name)
            self.client.volumes.create(name=name, labels=dict(self.labels))
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
        network: str | None = None,
        binds: Mapping[str, str] | None = None,
        hardened: bool = False,
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
            network: a user-defined network to attach the container to.
            binds: host path → path in the container, mounted read-only.
            hardened: read-only root file system, every capability dropped,
                ``no-new-privileges`` (for the harness's own helpers, such as the load
                balancer).
            init: run under Docker's init (``--init``, tini) instead of as PID 1.
            healthcheck: keep the image's ``HEALTHCHECK`` (False: ``--no-healthcheck``).
            name: container name; generated from the run id when omitted.
        """
        with self.creating():
            return self._run(
                image,
                ports=ports,
                env=env,
                volumes=volumes,
                command=command,
                entrypoint=entrypoint,
                network_mode=network_mode,
                network=network,
                binds=binds,
                hardened=hardened,
                init=init,
                healthcheck=healthcheck,
                name=name,
            )

    def _run(
        self,
        image: str,
        *,
        ports: Sequence[int],
        env: Mapping[str, str] | None,
        volumes: Mapping[str, str] | None,
        command: Sequence[str] | None,
        entrypoint: Sequence[str] | None,
        network_mode: str | None,
        network: str | None,
        binds: Mapping[str, str] | None,
        hardened: bool,
        init: bool,
        healthcheck: bool,
        name: str | None,
    ) -> Container:
        with self._lock:
            self._named += 1
            generated = f"{name_prefix(self.run_id)}{self._named}"
        kwargs: dict[str, Any] = {
            "labels": dict(self.labels),
            "environment": dict(env or {}),
            "name": name or generated,
            "privileged": False,
            "init": init,
        }
        if ports:
            kwargs["ports"] = {f"{p}/tcp": ("127.0.0.1", None) for p in ports}
        mounts = {v: {"bind": path, "mode": "rw"} for v, path in (volumes or {}).items()}
        mounts.update({host: {"bind": path, "mode": "ro"} for host, path in (binds or {}).items()})
        if mounts:
            kwargs["volumes"] = mounts
        if command is not None:
            kwargs["command"] = list(command)
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if network_mode is not None:
            kwargs["network_mode"] = network_mode
        if network is not None:
            kwargs["network"] = network
        if hardened:
            kwargs.update(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"])
        if not healthcheck:
            kwargs["healthcheck"] = {"test": ["NONE"]}
        # Create, then start: a container that fails to start (no such executable, a port
        # taken) is removed at once, with its anonymous volumes, not left until the run ends.
        raw = self.client.containers.create(image, **kwargs)
        with self._lock:
            self._containers.append(str(raw.id))
        try:
            raw.start()
        except Exception:
            remove(self.client, containers=[str(raw.id)])
            raise
        container = Container(raw)
        container.reload()
        return container

    def close(self) -> Cleanup:
        """Remove every container, volume and network this run created, and say what is left.

        Waits (up to ``CREATIONS_WAIT_S``) for creations still on their way in other threads,
        refuses new ones, removes by name, id and label, then looks again. Closing twice
        returns the first close's result.

        Returns:
            What was removed and what is still there (see :meth:`Cleanup.summary`).
        """
        with self._lock:
            if self._closed:
                assert self.cleanup is not None
                return self.cleanup
            self._closed = self._closing = True
            deadline = time.monotonic() + CREATIONS_WAIT_S
            while self._creating_now and (wait := deadline - time.monotonic()) > 0:
                self._idle.wait(wait)
            waited_out = self._creating_now
        try:
            removed = sweep(self.client, run_id=self.run_id, extra_containers=self._containers)
            left = leftovers(self.client, self.run_id, self._containers)
            if waited_out:
                left = (*left, f"what {waited_out} creation(s) still on their way may make")
            self.cleanup = Cleanup(self.run_id, removed, left)
        except Exception as exc:  # the engine went away: nothing can be said to be removed
            self.cleanup = Cleanup(self.run_id, 0, (f"everything ({type(exc).__name__})",))
        finally:
            self._volumes.clear()
            self._containers.clear()
            self.client.close()
        return self.cleanup

    async def aclose(self, *, on_signal: Callable[[], None] | None = None) -> Cleanup:
        """:meth:`close` in a thread, always to the end.

        A cancellation while it runs does not cut it short (the thread would go on anyway,
        and its result is what the caller must report): the close finishes, then the
        cancellation is raised; :attr:`cleanup` has the result.

        Args:
            on_signal: a command's final clean-up, which no signal may interrupt: called
                for SIGTERM and SIGINT while the close runs, which are ignored afterwards
                (the verdict is known), and for a cancellation (Ctrl-C as asyncio.run
                handles it, just before), which is then not raised.
        """
        loop = asyncio.get_running_loop()
        noted = (signal.SIGTERM, signal.SIGINT) if on_signal is not None else ()
        for sig in noted:
            loop.add_signal_handler(sig, on_signal or _ignore)
        closing = asyncio.ensure_future(asyncio.to_thread(self.close))
        cancelled = False
        try:
            while True:
                try:
                    result = await asyncio.shield(closing)
                except asyncio.CancelledError:
                    if closing.cancelled():
                        raise
                    cancelled = True
                    continue
                if cancelled and on_signal is None:
                    raise asyncio.CancelledError
                if cancelled and on_signal is not None:
                    on_signal()
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                return result
        finally:
            for sig in noted:
                loop.remove_signal_handler(sig)
                if on_signal is not None:  # a late signal must not undo the verdict
                    signal.signal(sig, signal.SIG_IGN)


def _ignore() -> None:
    pass

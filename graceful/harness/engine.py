"""The Docker Engine, through the ``docker`` SDK: images, containers, volumes, cleanup.

Every object the harness creates carries the label ``graceful.harness=<run id>`` and its
owner (:mod:`graceful.harness.runs`), and is removed when the :class:`Engine` closes, also
when a scenario fails or the harness is interrupted; :func:`remove` is the one way objects are
removed, by a scenario as by the final sweep. :func:`clean_up` removes what runs that are over
left behind (a killed run cannot clean up), never the objects of a run still going.

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

import contextlib
import importlib
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from graceful.exceptions import GracefulError
from graceful.harness.container import Container, ContainerError, ImageInfo, signal_name
from graceful.harness.runs import OWNER_LABEL, RunState, owner, run_state

if TYPE_CHECKING:
    # The SDK ships no type information (and the repository's docker/ scripts directory
    # shadows the package name for mypy): its objects are typed as Any.
    DockerClient = Any

__all__ = [
    "LABEL",
    "ContainerError",
    "Engine",
    "EngineUnavailable",
    "clean_up",
    "connect",
    "remote_engine",
    "remove",
    "sweep",
]

LABEL = "graceful.harness"

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

    .. versionadded:: 0.1
    """
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
        self._owner = owner()
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
        index = len(self._containers) + 1
        kwargs: dict[str, Any] = {
            "labels": dict(self.labels),
            "environment": dict(env or {}),
            "name": name or f"graceful-harness-{self.run_id}-{index}",
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
        self._containers.append(str(raw.id))
        try:
            raw.start()
        except Exception:
            remove(self.client, containers=[str(raw.id)])
            raise
        container = Container(raw)
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

    selector = {"label": f"{LABEL}={run_id}" if run_id else LABEL}
    ids = set(extra_containers)
    volumes: list[str] = []
    networks: list[str] = []
    with contextlib.suppress(docker.errors.APIError):
        ids.update(str(c.id) for c in client.containers.list(all=True, filters=selector))
    with contextlib.suppress(docker.errors.APIError):
        volumes = [str(v.name) for v in client.volumes.list(filters=selector)]
    with contextlib.suppress(docker.errors.APIError):
        networks = [str(n.id) for n in client.networks.list(filters=selector)]
    return remove(client, containers=ids, volumes=volumes, networks=networks)


def clean_up(client: DockerClient, *, everything: bool = False) -> tuple[int, set[str]]:
    """Remove what harness runs that are over left behind (``graceful harness clean``).

    Args:
        client: a connected ``docker.DockerClient``.
        everything: also remove the objects of runs still going, or whose owner cannot be
            told from here (another machine's).

    Returns:
        How many objects were removed, and the run ids whose objects were kept.

    .. versionadded:: 0.1
    """
    import docker.errors

    runs: dict[str, RunState] = {}
    selector = {"label": LABEL}
    found: list[Any] = []
    with contextlib.suppress(docker.errors.APIError):
        found += client.containers.list(all=True, filters=selector)
    with contextlib.suppress(docker.errors.APIError):
        found += client.volumes.list(filters=selector)
    with contextlib.suppress(docker.errors.APIError):
        found += client.networks.list(filters=selector)
    for obj in found:
        # Volumes and networks carry their labels at the top, containers in their config.
        labels = obj.attrs.get("Labels") or (obj.attrs.get("Config") or {}).get("Labels") or {}
        run = str(labels.get(LABEL) or "")
        if run and runs.get(run) is not RunState.ALIVE:  # one live object keeps the run
            runs[run] = run_state(labels.get(OWNER_LABEL))
    kept = {run for run, state in runs.items() if state is not RunState.OVER and not everything}
    removed = sum(sweep(client, run_id=run) for run in runs if run not in kept)
    return removed, kept


def remove(
    client: DockerClient,
    *,
    containers: Iterable[str] = (),
    volumes: Iterable[str] = (),
    networks: Iterable[str] = (),
) -> int:
    """Force-remove containers (with their anonymous volumes), then volumes, then networks.

    The one removal every part of the harness uses: a scenario's clean-up, the load
    balancer's network, the end of a run and ``graceful harness clean``. Objects already gone
    (or that the engine refuses to remove) are skipped.

    Args:
        client: a connected ``docker.DockerClient``.
        containers: container ids or names.
        volumes: volume names.
        networks: network ids or names (removed last: containers must have left them).

    Returns:
        How many objects were removed.

    .. versionadded:: 0.1
    """
    import docker.errors

    api = client.api
    steps = (
        # A stop that is still waiting in another thread returns once the container is gone.
        # v=True: an image's VOLUME gives every container an anonymous volume; drop it too.
        (containers, lambda name: api.remove_container(name, force=True, v=True)),
        (volumes, lambda name: api.remove_volume(name, force=True)),
        (networks, api.remove_network),
    )
    removed = 0
    for names, remove_one in steps:
        for name in dict.fromkeys(names):
            with contextlib.suppress(docker.errors.APIError):
                remove_one(name)
                removed += 1
    return removed

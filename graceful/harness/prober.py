"""The new-connection prober: is the listener refused, or accepted and reset, during a stop?

:class:`Prober` runs the program in :mod:`graceful.harness.probe_script` in a sidecar
container that shares the service's network namespace, so it reaches the service's own
listener: from the host, Docker's userland proxy accepts every connection and resets it when
the service refuses, which hides the difference between refused (correct) and reset (a
listener left open with nobody serving it). When no image with ``python3`` is at hand it runs
on the host against the published ports, and says so (:attr:`Prober.where`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import sys
import time
from dataclasses import dataclass

from graceful.harness.container import Container
from graceful.harness.context import HANG_GUARD_S, Context, Service

__all__ = ["PROBE_INTERVAL_S", "ProbeEvent", "Prober", "parse_probe_output", "probe_script"]

PROBE_INTERVAL_S = 0.02
# The base image the project's images are built on; it has python3.
_FALLBACK_IMAGE = "graceful-base:bookworm"


def probe_script() -> str:
    """The prober's program (``graceful/harness/probe_script.py``, shipped with the
    package), as text for ``python3 -c``: the sidecar's image has no graceful installed."""
    return importlib.resources.files(__package__).joinpath("probe_script.py").read_text()


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """One probe: a fresh connection to the service's port (``main``) or to its readiness
    path (``ready``), started at monotonic time ``t``; ``outcome`` is ``answered`` (with
    ``status``), ``refused``, ``reset``, ``closed``, ``timeout`` or ``error``; ``connected``
    whether a listener had taken the connection (None when the prober did not say).

    .. versionadded:: 0.1
    """

    t: float
    kind: str
    outcome: str
    status: int | None
    connected: bool | None = None


def parse_probe_output(text: str) -> list[ProbeEvent]:
    """Probe events from the prober's output, in the order the probes started; lines that
    are not probe events are skipped."""
    events: list[ProbeEvent] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            raw = json.loads(line)
            status = raw.get("status")
            connected = raw.get("connected")
            events.append(
                ProbeEvent(
                    t=float(raw["t"]),
                    kind=str(raw["kind"]),
                    outcome=str(raw["outcome"]),
                    status=status if isinstance(status, int) else None,
                    connected=connected if isinstance(connected, bool) else None,
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    # Probes run side by side and are printed as they end.
    return sorted(events, key=lambda e: e.t)


class Prober:
    """Opens fresh connections to the service's port and its readiness path every 20 ms.

    Start it with :meth:`start` before the stop, and collect its events with :meth:`finish`.

    Attributes:
        where: ``netns`` (a sidecar in the service's network namespace), ``host`` (through
            the published ports: refused and reset look alike) or ``none`` (not started).

    .. versionadded:: 0.1
    """

    def __init__(self, context: Context, service: Service) -> None:
        self.context = context
        self.service = service
        self.where = "none"
        self._sidecar: Container | None = None
        self._process: asyncio.subprocess.Process | None = None

    @classmethod
    async def start(cls, context: Context, service: Service) -> Prober:
        """Start probing ``service``; returns once the prober is known to run."""
        prober = cls(context, service)
        await prober._start()
        return prober

    def _args(self, port: int, admin: int | None) -> list[str]:
        """The script's arguments, for the service's ports as the prober reaches them."""
        w = self.context.workload
        seconds = self.context.stop_timeout + HANG_GUARD_S
        ready_port = {"admin": admin or 0, "main": port, "work": 0}[w.ready_on]
        return [
            str(port),
            str(ready_port),
            w.work_target(0),
            w.readiness_path or "/",
            str(PROBE_INTERVAL_S),
            str(seconds),
        ]

    async def _start(self) -> None:
        ctx = self.context
        candidates = [ctx.settings.probe_image] if ctx.settings.probe_image else []
        candidates += [ctx.image.ref, _FALLBACK_IMAGE]
        for image in dict.fromkeys(candidates):
            sidecar = await asyncio.to_thread(self._start_sidecar, image)
            if sidecar is not None:
                self._sidecar, self.where = sidecar, "netns"
                return
        # No python3 in any candidate image: probe from the host through the published ports.
        admin = self.service.admin_port
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            probe_script(),
            *self._args(self.service.main_port, admin),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.where = "host"

    def _start_sidecar(self, image: str) -> Container | None:
        import docker.errors

        ctx, w = self.context, self.context.workload
        try:
            sidecar = ctx.engine.run(
                image,
                entrypoint=["python3", "-c", probe_script()],
                command=self._args(w.port, w.admin_port),
                network_mode=f"container:{self.service.container.id}",
                healthcheck=False,
            )
        except docker.errors.APIError:
            return None
        ctx.track(sidecar)
        # Wait for its first line, so the prober is known to run before the stop begins.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if parse_probe_output(sidecar.logs()):
                return sidecar
            if not sidecar.running:
                return None
            time.sleep(0.02)
        return None

    async def finish(self) -> list[ProbeEvent]:
        """Stop the prober and return its events."""
        if self._sidecar is not None:
            sidecar = self._sidecar
            await asyncio.to_thread(sidecar.kill, "SIGKILL")
            return parse_probe_output(await asyncio.to_thread(sidecar.logs))
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            out, _ = await self._process.communicate()
            return parse_probe_output(out.decode())
        return []

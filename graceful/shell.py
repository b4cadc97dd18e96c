"""Owning a process for its stop: the one shell around a runtime and around a supervisor.

``graceful.run`` (one process) and ``graceful serve --workers N`` (a supervisor) own their
process the same way, so they share this: the stop signals, caught before the loop runs (a
signal that arrives then is kept and handed over when it does), the watchdog armed at the
signal's own moment, the event loop and its bounded closing, output that never fails a stop,
and the logging set up when the app did not. The owner supplies what differs: its exit deadline
for a stop that began at a given moment, what to do when a signal reaches the loop, and what
the watchdog reports.

::

    shell = ProcessShell(config, log=log, exit_at=plan, on_signal=arrived, describe=describe)
    shell.install_signals()
    code = shell.run(serve, output=lossy_output)   # serve() calls shell.attach(loop) first
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from graceful.config import Config
from graceful.exceptions import ConfigError
from graceful.health import AdminServer
from graceful.logs import configure_logging
from graceful.loops import loop_factory
from graceful.runner import run_on_new_loop
from graceful.signals import Escalation, StopSignals
from graceful.status import ExitCode
from graceful.watchdog import Watchdog, grace_for

__all__ = ["ProcessShell"]


class ProcessShell:
    """The signals, watchdog and loop of a process that serves until a stop.

    Args:
        config: the signals to handle, the loop, the logs and the margin of the watchdog.
        log: where the signals' own events go.
        exit_at: the exit deadline (monotonic) of a stop whose signal arrived at a moment.
        on_signal: called on the loop for each stop signal, with its escalation level.
        describe: what the watchdog logs about the stop when it ends the process.
    """

    def __init__(
        self,
        config: Config,
        *,
        log: Any,
        exit_at: Callable[[float], float],
        on_signal: Callable[[signal.Signals, Escalation], None],
        describe: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.log = log
        self._exit_at = exit_at
        self._on_signal = on_signal
        self._describe = describe
        #: When the first stop signal arrived (monotonic): the budget counts from then.
        self.signal_at: float | None = None
        #: The first stop signal (SIGINT is a person at a terminal, the others a supervisor).
        self.first_signal: signal.Signals | None = None
        self.signals: StopSignals | None = None
        self.watchdog: Watchdog | None = None
        self.admin: AdminServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._before_loop: list[tuple[signal.Signals, Escalation]] = []

    def install_signals(self) -> None:
        """Handle the stop signals from now on (as PID 1, one that finds no handler is lost)."""
        self.signals = StopSignals.for_config(self.config, self._caught, self.log)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver signals to ``loop`` from now on, and those that came before it ran."""
        self._loop = loop
        early, self._before_loop = self._before_loop, []
        for sig, level in early:
            self._on_signal(sig, level)

    def run(
        self, serve: Callable[[], Coroutine[Any, Any, int]], *, output: Callable[[], None]
    ) -> int:
        """Run ``serve()`` on a new loop under the watchdog; return its exit code.

        Args:
            serve: the owner's coroutine function; it calls :meth:`attach` first.
            output: makes stdout and stderr safe for a stop (no write may raise).
        """
        config = self.config
        try:
            factory = loop_factory(config.loop)
        except ConfigError as exc:
            print(f"graceful: configuration error: {exc}", file=sys.stderr, flush=True)
            return int(ExitCode.ERROR)
        output()
        if not structlog.is_configured() and config.log_format != "off":
            configure_logging(format=config.log_format, level=config.log_level)
        self.watchdog = Watchdog(
            exit_code=int(ExitCode.OVERRAN),
            describe=self._describe,
            grace=grace_for(config.effective_margin),
        )
        self.watchdog.start()
        if self.signal_at is not None:  # a signal came already: its deadline holds
            self.watchdog.arm(self._exit_at(self.signal_at))
        return run_on_new_loop(factory, serve())

    async def start_admin(
        self,
        *,
        is_live: Callable[[], bool],
        is_ready: Callable[[], bool],
        registry: CollectorRegistry,
    ) -> bool:
        """Start the admin server (``/livez``, ``/readyz``, ``/metrics``) if a port is set.

        Returns:
            False when it could not start (the port taken, the host unknown): logged as
            ``startup.failed``, a failed startup.
        """
        config = self.config
        if config.admin_port is None:
            return True
        admin = AdminServer(
            host=config.admin_host,
            port=config.admin_port,
            is_live=is_live,
            is_ready=is_ready,
            registry=registry,
        )
        try:
            await admin.start()
        except ConfigError as exc:
            self.log.error("startup.failed", error=str(exc))
            return False
        self.admin = admin
        self.log.info("admin.listening", host=config.admin_host, port=admin.port)
        return True

    async def close_admin(self) -> None:
        """Stop the admin server, last of all (the final scrape)."""
        if self.admin is not None:
            await self.admin.close()

    def release(self, *, keep_watchdog: bool = False) -> None:
        """Give the process back: the previous signal handlers, the watchdog off (unless the
        process is ending and the watchdog guards its teardown). Idempotent."""
        if self.signals is not None:
            self.signals.restore()
        if self.watchdog is not None and not keep_watchdog:
            self.watchdog.disarm()

    def _caught(self, sig: signal.Signals, level: Escalation, at: float) -> None:
        # Signal-handler context: record and wake the loop, nothing else. The budget counts
        # from now, not from when a possibly blocked loop gets to it, and the watchdog is armed
        # here for the same reason.
        if level is Escalation.STOP and self.signal_at is None:
            self.signal_at = at
            self.first_signal = sig
            if self.watchdog is not None:
                self.watchdog.arm(self._exit_at(at))
        loop = self._loop
        if loop is None:
            self._before_loop.append((sig, level))
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._on_signal, sig, level)

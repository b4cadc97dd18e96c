"""Configuration: one frozen, keyword-only dataclass, validated on construction.

Every phase budget derives from one number, ``stop_timeout``: what the orchestrator gives the
process between SIGTERM and SIGKILL (``docker stop -t``, Kubernetes'
``terminationGracePeriodSeconds``). Precedence: explicit argument > environment > default.
"""

from __future__ import annotations

import ipaddress
import math
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from graceful.environment import from_environment
from graceful.exceptions import ConfigError

__all__ = ["ENV_VARS", "MAX_SECONDS", "STOP_SIGNALS", "Config"]

LoopName = Literal["auto", "asyncio", "uvloop"]
LogFormat = Literal["auto", "json", "console", "off"]

_LOOPS = ("auto", "asyncio", "uvloop")
_LOG_FORMATS = ("auto", "json", "console", "off")
_LOG_LEVELS = ("debug", "info", "warning", "error")

#: Environment variable for each setting that can come from the environment.
ENV_VARS: dict[str, str] = {
    "stop_timeout": "GRACEFUL_STOP_TIMEOUT",
    "delay": "GRACEFUL_DELAY",
    "drain_timeout": "GRACEFUL_DRAIN_TIMEOUT",
    "margin": "GRACEFUL_MARGIN",
    "reserve": "GRACEFUL_RESERVE",
    "hook_timeout": "GRACEFUL_HOOK_TIMEOUT",
    "signals": "GRACEFUL_SIGNALS",
    "repeat_window": "GRACEFUL_REPEAT_WINDOW",
    "ownership_interval": "GRACEFUL_OWNERSHIP_INTERVAL",
    "loop": "GRACEFUL_LOOP",
    "admin_host": "ADMIN_HOST",
    "admin_port": "ADMIN_PORT",
    "log_format": "GRACEFUL_LOG_FORMAT",
    "log_level": "GRACEFUL_LOG_LEVEL",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """How a service starts and stops.

    Durations are seconds, at most ``MAX_SECONDS`` (a day).

    Args:
        stop_timeout: seconds between the stop signal and SIGKILL (Docker: 10).
        delay: propagation delay after ``/readyz`` turns 503 and before the listeners close,
            so load balancers stop routing first. 0 under plain Docker, a few seconds on
            Kubernetes.
        drain_timeout: cap on the drain phase; ``None`` gives drain everything left after the
            reserve for cancel, flush and close.
        margin: seconds to leave before SIGKILL; ``None`` derives it (10 % of stop_timeout,
            between 0.05 and 1 s).
        reserve: seconds kept for cancel, flush and close, so a slow drain can never starve
            them; ``None`` derives it (20 % of stop_timeout, between 0.2 and 3 s).
        hook_timeout: default cap on one shutdown hook; ``None`` lets a hook use what is left
            of its phase.
        signals: names of the signals that start a stop (an image's ``STOPSIGNAL``), from
            ``STOP_SIGNALS``: SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR.
        repeat_window: seconds within which repeated stop signals count as one (a storm);
            0 makes every signal escalate.
        ownership_interval: seconds between the first checks that another library has not
            replaced our signal handlers (later checks come ten times less often).
        loop: ``"auto"`` uses uvloop when installed, ``"asyncio"`` opts out.
        admin_host: address of the admin server (``/livez``, ``/readyz``, ``/metrics``), an
            IP address or a host name; ``0.0.0.0`` when the kubelet or a load balancer
            probes it from outside the container.
        admin_port: port of the admin server; ``None`` runs none.
        handle_signals: install signal handlers; off for embedding in another runner.
        reap_zombies: reap orphaned children; ``None`` does it only when running as PID 1.
        log_format: ``"auto"`` is pretty on a TTY and JSON otherwise; ``"off"`` leaves
            logging configuration to the application.
        log_level: minimum level of graceful's own log events.

    Raises:
        ConfigError: a value cannot work; the message names the argument and the value
            (``from_env`` names the environment variable when the value came from there).

    .. versionadded:: 0.1
    """

    stop_timeout: float = 10.0
    delay: float = 0.0
    drain_timeout: float | None = None
    margin: float | None = None
    reserve: float | None = None
    hook_timeout: float | None = None
    signals: tuple[str, ...] = ("SIGTERM", "SIGINT")
    repeat_window: float = 0.5
    ownership_interval: float = 0.5
    loop: LoopName = "auto"
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    handle_signals: bool = True
    reap_zombies: bool | None = None
    log_format: LogFormat = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        _validate(self._values(), lambda name: f"{name}={getattr(self, name)!r}")

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def effective_margin(self) -> float:
        """Seconds left before SIGKILL when the process must be gone (derived: to the ms)."""
        if self.margin is not None:
            return self.margin
        # Rounded to the millisecond: 0.1 * 3 is 0.30000000000000004, which logs read badly.
        # Never more than half the budget: a 10 ms stop timeout must not plan an exit before
        # the signal.
        return round(min(max(0.1 * self.stop_timeout, 0.05), 1.0, self.stop_timeout / 2), 3)

    @property
    def effective_reserve(self) -> float:
        """Seconds kept for cancel, flush and close (derived: to the ms).

        Derived, it is a fifth of the stop timeout (0.2 s to 3 s), but never more than half of
        what the margin leaves: with a stop timeout under half a second the 0.2 s floor took
        it all, the drain got no time, and an idle service stopped with exit 3.
        """
        if self.reserve is not None:
            return self.reserve
        usable = self.stop_timeout - self.effective_margin
        return round(min(max(0.2 * self.stop_timeout, 0.2), 3.0, usable / 2), 3)

    def fit_warnings(self) -> list[str]:
        """Explain, with the numbers, why this configuration cannot fit its stop timeout."""
        warnings = []
        usable = self.stop_timeout - self.effective_margin
        fixed = self.delay + self.effective_reserve
        if fixed >= usable:
            warnings.append(
                f"delay ({self.delay:g}s) + reserve for cancel/flush/close "
                f"({self.effective_reserve:g}s) leaves no time to drain within stop_timeout "
                f"({self.stop_timeout:g}s) minus margin ({self.effective_margin:g}s); "
                "the delay will be shortened so the listeners can close and the drain run"
            )
        elif self.drain_timeout is not None and fixed + self.drain_timeout > usable:
            warnings.append(
                f"delay ({self.delay:g}s) + drain_timeout ({self.drain_timeout:g}s) + reserve "
                f"({self.effective_reserve:g}s) = {fixed + self.drain_timeout:g}s exceeds "
                f"stop_timeout ({self.stop_timeout:g}s) minus margin "
                f"({self.effective_margin:g}s): the drain gets only {usable - fixed:g}s"
            )
        if self.hook_timeout is not None and self.hook_timeout > self.effective_reserve:
            warnings.append(
                f"hook_timeout ({self.hook_timeout:g}s) is longer than the reserve for "
                f"cancel/flush/close ({self.effective_reserve:g}s): a slow flush after a full "
                "drain will be cut by the exit deadline"
            )
        return warnings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a configuration from the environment, explicit overrides winning.

        Args:
            environ: the environment to read; ``os.environ`` when omitted.
            **overrides: field values that win over the environment.

        Raises:
            ConfigError: a variable holds a value that cannot work; the message names it.

        .. versionadded:: 0.1
        """
        return from_environment(
            cls,
            ENV_VARS,
            environ=environ,
            overrides=overrides,
            parse=_parse_env,
            validate=_validate,
        )


#: Longest accepted duration, in seconds: a day. Longer is a typo, and overflows the timers
#: that enforce the deadline.
MAX_SECONDS = 86400.0

#: Signals that can start a stop. Others mean something else (SIGCHLD, SIGWINCH, SIGCONT,
#: job control), report a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL) or cannot be caught
#: (SIGKILL, SIGSTOP). SIGPWR is what LXC sends a container's init to shut it down.
STOP_SIGNALS: tuple[str, ...] = tuple(
    name
    for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGPWR")
    if hasattr(signal, name)
)

#: The shortest stop budget that can be split into phases (whole milliseconds each).
MIN_STOP_TIMEOUT = 0.01
#: The shortest margin before SIGKILL (a millisecond: the precision of every deadline).
MIN_MARGIN = 0.001

_SECONDS = (
    "stop_timeout",
    "delay",
    "drain_timeout",
    "margin",
    "reserve",
    "hook_timeout",
    "repeat_window",
    "ownership_interval",
)
_POSITIVE = ("stop_timeout", "drain_timeout", "hook_timeout", "ownership_interval")
_OPTIONAL = ("drain_timeout", "margin", "reserve", "hook_timeout")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _parse_env(name: str, raw: str, label: str) -> Any:
    """Turn one environment value into a field value; ``label`` names the variable and value.

    Only the type is checked here; ``_validate`` checks ranges, with the same label.
    """
    if name in _SECONDS:
        if name in ("drain_timeout", "hook_timeout") and raw.lower() in ("none", "inf"):
            return None
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{label} is not a number of seconds") from None
    if name == "admin_port":
        if raw.lower() in ("none", "off"):
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{label} is not a port number (or 'off')") from None
    if name == "signals":
        value = tuple(s.strip().upper() for s in raw.split(",") if s.strip())
        return tuple(s if s.startswith("SIG") else f"SIG{s}" for s in value)
    if name in ("loop", "log_format", "log_level"):
        return raw.lower()
    return raw


def _validate(values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Check every setting; ``label(name)`` names one in an error (variable or argument)."""
    for name in _SECONDS:
        _check_seconds(
            label(name), values[name], positive=name in _POSITIVE, optional=name in _OPTIONAL
        )
    margin, stop_timeout = values["margin"], values["stop_timeout"]
    if margin is not None and margin < MIN_MARGIN:
        # Less would plan the exit at the very moment of SIGKILL, with no room for the watchdog.
        raise ConfigError(f"{label('margin')} is under {MIN_MARGIN:g} s: no time left to exit")
    if stop_timeout < MIN_STOP_TIMEOUT:
        raise ConfigError(f"{label('stop_timeout')} is under {MIN_STOP_TIMEOUT:g} s: no stop fits")
    if margin is not None and margin >= stop_timeout:
        raise ConfigError(f"{label('margin')} must be smaller than {label('stop_timeout')}")
    _check_signals(label("signals"), values["signals"])
    _check_choice(label("loop"), values["loop"], _LOOPS)
    _check_choice(label("log_format"), values["log_format"], _LOG_FORMATS)
    _check_choice(label("log_level"), values["log_level"], _LOG_LEVELS)
    _check_port(label("admin_port"), values["admin_port"])
    _check_host(label("admin_host"), values["admin_host"])
    if not isinstance(values["handle_signals"], bool):
        raise ConfigError(f"{label('handle_signals')} must be True or False")
    if values["reap_zombies"] is not None and not isinstance(values["reap_zombies"], bool):
        raise ConfigError(f"{label('reap_zombies')} must be True, False or None")


def _check_seconds(label: str, value: object, *, positive: bool, optional: bool) -> None:
    if value is None:
        if optional:
            return
        raise ConfigError(f"{label} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{label} is not a number of seconds")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a positive" if positive else "a non-negative"
        raise ConfigError(f"{label} must be {need} finite number of seconds")
    if value > MAX_SECONDS:
        raise ConfigError(f"{label} is more than a day ({MAX_SECONDS:g} seconds)")


def _check_signals(label: str, value: object) -> None:
    if (
        isinstance(value, str)
        or not isinstance(value, tuple | list)
        or not all(isinstance(sig, str) for sig in value)
    ):
        raise ConfigError(f"{label} must be a tuple of signal names, such as ('SIGTERM',)")
    if not value:
        raise ConfigError(f"{label} must name at least one signal")
    for sig in value:
        if sig in STOP_SIGNALS:
            continue
        if sig in ("SIGKILL", "SIGSTOP"):
            why = "cannot be caught, so it cannot start a graceful stop"
        elif isinstance(getattr(signal, sig, None), signal.Signals):
            why = "is not a stop signal"
        else:
            why = "is not a signal name"
        raise ConfigError(f"{label}: {sig} {why}; use {', '.join(STOP_SIGNALS)}")


def _check_choice(label: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{label} must be one of {', '.join(choices)}")


def _check_port(label: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{label} must be a TCP port number between 0 and 65535")


def _check_host(label: str, value: object) -> None:
    """An IP address or a host name: what the admin server can bind without surprises."""
    if isinstance(value, str) and value:
        try:
            ipaddress.ip_address(value)
            return
        except ValueError:
            pass
        name = value.removesuffix(".")
        if len(name) <= 253 and all(_HOST_LABEL.fullmatch(part) for part in name.split(".")):
            return
    raise ConfigError(f"{label} must be an IP address (such as 127.0.0.1) or a host name")

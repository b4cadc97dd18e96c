"""Configuration: one frozen, keyword-only dataclass, validated on construction.

Every phase budget derives from one number, ``stop_timeout``: what the orchestrator gives the
process between SIGTERM and SIGKILL (``docker stop -t``, Kubernetes'
``terminationGracePeriodSeconds``). Precedence: explicit argument > environment > default.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from graceful.exceptions import ConfigError

__all__ = ["ENV_VARS", "Config"]

LoopName = Literal["auto", "asyncio", "uvloop"]
LogFormat = Literal["auto", "json", "console", "off"]

_LOOPS = ("auto", "asyncio", "uvloop")
_LOG_FORMATS = ("auto", "json", "console", "off")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")

#: Environment variable for each setting that can come from the environment.
ENV_VARS: dict[str, str] = {
    "stop_timeout": "GRACEFUL_STOP_TIMEOUT",
    "delay": "GRACEFUL_DELAY",
    "drain_timeout": "GRACEFUL_DRAIN_TIMEOUT",
    "margin": "GRACEFUL_MARGIN",
    "reserve": "GRACEFUL_RESERVE",
    "hook_timeout": "GRACEFUL_HOOK_TIMEOUT",
    "signals": "GRACEFUL_SIGNALS",
    "loop": "GRACEFUL_LOOP",
    "admin_host": "ADMIN_HOST",
    "admin_port": "ADMIN_PORT",
    "log_format": "GRACEFUL_LOG_FORMAT",
    "log_level": "GRACEFUL_LOG_LEVEL",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """How a service starts and stops.

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
        signals: names of the signals that start a stop (an image's ``STOPSIGNAL``).
        loop: ``"auto"`` uses uvloop when installed, ``"asyncio"`` opts out.
        admin_host: address of the admin server (``/livez``, ``/readyz``, ``/metrics``).
        admin_port: port of the admin server; ``None`` runs none.
        handle_signals: install signal handlers; off for embedding in another runner.
        reap_zombies: reap orphaned children; ``None`` does it only when running as PID 1.
        log_format: ``"auto"`` is pretty on a TTY and JSON otherwise; ``"off"`` leaves
            logging configuration to the application.
        log_level: minimum level of graceful's own log events.

    Raises:
        ConfigError: a value cannot work; the message names the setting and the value.

    .. versionadded:: 0.1
    """

    stop_timeout: float = 10.0
    delay: float = 0.0
    drain_timeout: float | None = None
    margin: float | None = None
    reserve: float | None = None
    hook_timeout: float | None = None
    signals: tuple[str, ...] = ("SIGTERM", "SIGINT")
    loop: LoopName = "auto"
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    handle_signals: bool = True
    reap_zombies: bool | None = None
    log_format: LogFormat = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check_seconds("stop_timeout", self.stop_timeout, positive=True)
        _check_seconds("delay", self.delay)
        _check_seconds("drain_timeout", self.drain_timeout, positive=True, optional=True)
        _check_seconds("margin", self.margin, optional=True)
        _check_seconds("reserve", self.reserve, optional=True)
        _check_seconds("hook_timeout", self.hook_timeout, positive=True, optional=True)
        if self.margin is not None and self.margin >= self.stop_timeout:
            raise ConfigError(
                f"margin={self.margin!r} must be smaller than stop_timeout={self.stop_timeout!r}"
            )
        _check_signals("signals", self.signals)
        _check_choice("loop", self.loop, _LOOPS)
        _check_choice("log_format", self.log_format, _LOG_FORMATS)
        _check_choice("log_level", self.log_level, _LOG_LEVELS)
        _check_port("admin_port", self.admin_port)
        if not self.admin_host:
            raise ConfigError("admin_host must not be empty")

    @property
    def effective_margin(self) -> float:
        """Seconds left before SIGKILL when the process must be gone."""
        if self.margin is not None:
            return self.margin
        return min(max(0.1 * self.stop_timeout, 0.05), 1.0)

    @property
    def effective_reserve(self) -> float:
        """Seconds kept for cancel, flush and close."""
        if self.reserve is not None:
            return self.reserve
        return min(max(0.2 * self.stop_timeout, 0.2), 3.0)

    def fit_warnings(self) -> list[str]:
        """Explain, with the numbers, why this configuration cannot fit its stop timeout."""
        warnings = []
        usable = self.stop_timeout - self.effective_margin
        fixed = self.delay + self.effective_reserve
        if fixed >= usable:
            warnings.append(
                f"delay ({self.delay:g}s) + reserve for cancel/flush/close "
                f"({self.effective_reserve:g}s) leaves no time to drain within stop_timeout "
                f"({self.stop_timeout:g}s) minus margin ({self.effective_margin:g}s)"
            )
        elif self.drain_timeout is not None and fixed + self.drain_timeout > usable:
            warnings.append(
                f"delay ({self.delay:g}s) + drain_timeout ({self.drain_timeout:g}s) + reserve "
                f"({self.effective_reserve:g}s) = {fixed + self.drain_timeout:g}s exceeds "
                f"stop_timeout ({self.stop_timeout:g}s) minus margin "
                f"({self.effective_margin:g}s): drain will be cut at {usable - fixed:g}s"
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
        environ = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = environ.get(var)
            if raw is None or raw.strip() == "" or name in overrides:
                continue
            values[name] = _parse_env(name, var, raw.strip())
        values.update(overrides)
        return cls(**values)


def _parse_env(name: str, var: str, raw: str) -> Any:
    """Turn one environment value into a field value, naming the variable on error."""
    try:
        if name in ("stop_timeout", "delay", "drain_timeout", "margin", "reserve", "hook_timeout"):
            if name in ("drain_timeout", "hook_timeout") and raw.lower() in ("none", "inf"):
                return None
            value: Any = float(raw)
            _check_seconds(var, value, positive=name in ("stop_timeout", "drain_timeout"))
            return value
        if name == "admin_port":
            if raw.lower() in ("none", "off"):
                return None
            value = int(raw)
            _check_port(var, value)
            return value
        if name == "signals":
            value = tuple(s.strip().upper() for s in raw.split(",") if s.strip())
            value = tuple(s if s.startswith("SIG") else f"SIG{s}" for s in value)
            _check_signals(var, value)
            return value
        if name == "loop":
            _check_choice(var, raw, _LOOPS)
        elif name == "log_format":
            _check_choice(var, raw, _LOG_FORMATS)
        elif name == "log_level":
            raw = raw.lower()
            _check_choice(var, raw, _LOG_LEVELS)
        return raw
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from None


def _check_seconds(
    name: str, value: object, *, positive: bool = False, optional: bool = False
) -> None:
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} is not a number of seconds")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a positive" if positive else "a non-negative"
        raise ConfigError(f"{name}={value!r} must be {need} finite number of seconds")


def _check_signals(name: str, value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigError(f"{name} must name at least one signal")
    for sig in value:
        if sig in _UNCATCHABLE:
            raise ConfigError(f"{name}: {sig} cannot be caught, so it cannot start a graceful stop")
        if not isinstance(getattr(signal, sig, None), signal.Signals):
            raise ConfigError(f"{name}: unknown signal name {sig!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")


def _check_port(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{name}={value!r} must be a TCP port number between 0 and 65535")

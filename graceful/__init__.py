"""graceful: containerized asyncio services that stop correctly."""

import typing

from graceful.config import Config
from graceful.draining import Drainable, WorkTracker
from graceful.exceptions import (
    ConfigError,
    GracefulError,
    HookError,
    ShutdownTimeout,
    StateError,
    TargetImportError,
)
from graceful.logs import configure_logging, get_logger
from graceful.runtime import ExitCode, LifecycleState, Phase, Runtime, current_runtime, run

if typing.TYPE_CHECKING:
    from graceful.state import Batcher, DurableStore

__all__ = [
    "Batcher",
    "Config",
    "ConfigError",
    "Drainable",
    "DurableStore",
    "ExitCode",
    "GracefulError",
    "HookError",
    "LifecycleState",
    "Phase",
    "Runtime",
    "ShutdownTimeout",
    "StateError",
    "TargetImportError",
    "WorkTracker",
    "configure_logging",
    "current_runtime",
    "get_logger",
    "run",
]

__version__ = "0.1.0"


_ON_FIRST_USE = ("Batcher", "DurableStore")


def __getattr__(name: str) -> typing.Any:
    # The store (and sqlite3) is imported on first use: a process that never keeps state,
    # such as each worker of ``graceful serve --workers``, does not carry it.
    if name in _ON_FIRST_USE:
        from graceful import state

        return getattr(state, name)
    raise AttributeError(f"module 'graceful' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ON_FIRST_USE])

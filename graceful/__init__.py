"""graceful: containerized asyncio services that stop correctly."""

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

"""graceful: containerized asyncio services that stop correctly.

Every name here is imported on first use (PEP 562): the ``graceful`` command installs its
stop-signal handlers before anything heavy is imported
(:meth:`graceful.signals.StartupSignals.capture`), and a process that never keeps state,
such as each worker of ``graceful serve --workers``, never loads the store.
"""

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from graceful.config import Config
    from graceful.draining import Drainable, WorkTracker
    from graceful.exceptions import (
        ConfigError,
        GracefulError,
        HookError,
        StateError,
        TargetImportError,
    )
    from graceful.logs import configure_logging, get_logger
    from graceful.runtime import (
        ExitCode,
        LifecycleState,
        Phase,
        Runtime,
        current_runtime,
        run,
    )
    from graceful.state import Batcher, DurableStore
del TYPE_CHECKING

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
    "StateError",
    "TargetImportError",
    "WorkTracker",
    "configure_logging",
    "current_runtime",
    "get_logger",
    "run",
]

__version__ = "0.1.0"

#: Where each public name lives.
_HOMES = {
    "Batcher": "graceful.state",
    "Config": "graceful.config",
    "ConfigError": "graceful.exceptions",
    "Drainable": "graceful.draining",
    "DurableStore": "graceful.state",
    "ExitCode": "graceful.runtime",
    "GracefulError": "graceful.exceptions",
    "HookError": "graceful.exceptions",
    "LifecycleState": "graceful.runtime",
    "Phase": "graceful.runtime",
    "Runtime": "graceful.runtime",
    "StateError": "graceful.exceptions",
    "TargetImportError": "graceful.exceptions",
    "WorkTracker": "graceful.draining",
    "configure_logging": "graceful.logs",
    "current_runtime": "graceful.runtime",
    "get_logger": "graceful.logs",
    "run": "graceful.runtime",
}


def __getattr__(name: str) -> "Any":  # a string: typing is not imported at run time
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'graceful' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""Event-loop factories: uvloop when installed, the standard loop on request.

Factories, never policies: ``set_event_loop_policy`` is deprecated in Python 3.14.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from graceful.exceptions import ConfigError

__all__ = ["loop_factory"]


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory for ``"auto"``, ``"asyncio"`` or ``"uvloop"``.

    Raises:
        ConfigError: ``"uvloop"`` was asked for and is not installed.

    .. versionadded:: 0.1
    """
    if name == "asyncio" or (name == "auto" and importlib.util.find_spec("uvloop") is None):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "GRACEFUL_LOOP='uvloop' but uvloop is not installed "
            "(pip install 'graceful-stop[uvloop]')"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory

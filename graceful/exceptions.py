"""Error types raised by graceful. Imports nothing from graceful."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GracefulError",
    "HookError",
    "StateError",
    "TargetImportError",
]


class GracefulError(Exception):
    """Base class of every error graceful raises.

    .. versionadded:: 0.1
    """


class ConfigError(GracefulError, ValueError):
    """A setting (argument or environment variable) has a value that cannot work.

    The message names the setting and the value, so it can be fixed without reading code.

    .. versionadded:: 0.1
    """


class HookError(GracefulError):
    """A startup or shutdown hook failed.

    .. versionadded:: 0.1
    """


class StateError(GracefulError):
    """Durable state cannot be opened or written; the message names the path.

    .. versionadded:: 0.1
    """


class TargetImportError(GracefulError, ImportError):
    """``graceful run module:attr`` could not import its target.

    .. versionadded:: 0.1
    """

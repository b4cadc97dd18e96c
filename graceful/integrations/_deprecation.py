"""Old names of the integrations' functions, kept working with a ``DeprecationWarning``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def renamed(new: Callable[P, R], old: str) -> Callable[P, R]:
    """``new`` under its old name ``old``: each call warns, then calls ``new``.

    Args:
        new: the function under its current name.
        old: the old name as users wrote it (e.g. ``"asgi.stopping"``), for the warning.

    Returns:
        The deprecated alias.
    """
    message = f"{old}() is deprecated; use {new.__module__}.{new.__name__}()"

    @functools.wraps(new)
    def alias(*args: P.args, **kwargs: P.kwargs) -> R:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = old.rsplit(".", 1)[-1]
    alias.__qualname__ = alias.__name__
    alias.__doc__ = f"Deprecated name of :func:`{new.__name__}` (warns, then calls it)."
    return alias

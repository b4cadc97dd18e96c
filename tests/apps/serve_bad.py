"""Test targets ``graceful serve`` must refuse, each with a one-line reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

import graceful

number = 3


def create_app() -> Callable[..., Awaitable[None]]:
    """An app factory: served only with --factory."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    return app


def make_number() -> int:
    """A factory that does not return an app."""
    return 3


async def make_app_async() -> Any:
    """An async factory: not supported."""
    return create_app()


async def main(runtime: graceful.Runtime) -> None:
    """A graceful main: `graceful run`, not `serve`."""


runtime = graceful.Runtime(graceful.Config(), registry=CollectorRegistry())

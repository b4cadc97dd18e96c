"""``graceful serve module:attr``: an existing ASGI or aiohttp app under the graceful runtime."""

from graceful.serve.app import serve_target
from graceful.serve.options import ServeOptions
from graceful.serve.target import Target, load_target

__all__ = ["ServeOptions", "Target", "load_target", "serve_target"]

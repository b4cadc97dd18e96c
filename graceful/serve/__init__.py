"""``graceful serve module:attr``: an existing ASGI or aiohttp app under the graceful runtime.

The names below are the package's API. Its other modules (the supervisor, the zygote, the
worker pool, the control link, the listeners) are the ``graceful serve`` command's internals:
their names may change in any release.
"""

from graceful.serve.app import serve_target
from graceful.serve.options import ServeOptions
from graceful.serve.target import Target, load_target

__all__ = ["ServeOptions", "Target", "load_target", "serve_target"]

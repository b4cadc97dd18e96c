"""Test app for the access line: a plain Starlette app that knows nothing of graceful.

- ``GET /anything``: ``ok``, whatever the path (hostile paths reach the app and its line).
- ``ACCESS_FILTER=1``: installs, at import, the filter uvicorn users write to keep health
  checks out of ``uvicorn.access`` (it reads uvicorn's arguments: ``record.args[2]`` is the
  path and query).
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


class HealthChecksOut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and args[2] == "/health")


if os.environ.get("ACCESS_FILTER") == "1":
    logging.getLogger("uvicorn.access").addFilter(HealthChecksOut())


async def anything(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/{rest:path}", anything)])

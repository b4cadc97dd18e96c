"""Test app for ``graceful serve --workers N``: a Starlette app, plus what the tests need.

- ``GET /pid``: ``<pid> <worker index>`` of the worker that answers.
- ``GET /work?ms=N``: sleeps N ms, answers ``done`` (and counts ``app_requests_total``); when
  N > 0 it first prints ``APP work started``.
- ``GET /block?s=N``: blocks the worker's event loop for N s (a stuck worker).

At lifespan startup each worker counts ``app_workers_started_total`` (metrics add up across
workers) and, when asked by the environment:

- ``APP_ORPHAN=1``: leaves an orphan (``sh -c 'sleep 0.1 &'``) for PID 1 to reap;
- ``APP_FAILING_HOOK_WORKER=I``: worker I registers a flush hook that raises (exit 4);
- ``APP_UNREADY_BLOCK_S=S``: an ``unready`` hook blocks the worker's loop for S seconds, so
  connections made meanwhile queue in the backlog until the listeners close.

At import: ``APP_IMPORT_DELAY_S`` sleeps (a slow start); if the file ``APP_FAIL_FILE`` names
exists, the import fails (a worker that cannot start).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import graceful

time.sleep(float(os.environ.get("APP_IMPORT_DELAY_S", "0")))
_fail_file = os.environ.get("APP_FAIL_FILE")
if _fail_file and Path(_fail_file).exists():
    raise RuntimeError(f"{_fail_file} exists: this worker refuses to start")

REQUESTS = Counter("app_requests", "Requests to /work.")
STARTED = Counter("app_workers_started", "Workers that ran the lifespan startup.")


async def pid(request: Request) -> Response:
    return PlainTextResponse(f"{os.getpid()} {os.environ.get('GRACEFUL_WORKER', '-')}")


async def work(request: Request) -> Response:
    REQUESTS.inc()
    ms = int(request.query_params.get("ms", "0"))
    if ms:
        print(f"APP work started ms={ms} pid={os.getpid()}", flush=True)
    await asyncio.sleep(ms / 1000)
    return PlainTextResponse("done")


async def block(request: Request) -> Response:
    time.sleep(float(request.query_params.get("s", "1")))  # noqa: ASYNC251 (the point)
    return PlainTextResponse("unblocked")


def _failing_flush() -> None:
    raise RuntimeError("this flush hook fails on purpose")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    STARTED.inc()
    if os.environ.get("APP_ORPHAN") == "1":
        subprocess.run(["sh", "-c", "sleep 0.1 &"], check=True)  # noqa: ASYNC221 (brief)
    runtime = graceful.current_runtime()
    if os.environ.get("APP_FAILING_HOOK_WORKER") == os.environ.get("GRACEFUL_WORKER"):
        runtime.on_shutdown(_failing_flush, name="app.failing_flush")
    starting = float(os.environ.get("APP_LIFESPAN_DELAY_S", "0"))
    if starting:
        print(f"APP lifespan starting pid={os.getpid()}", flush=True)
        await asyncio.sleep(starting)
    block = float(os.environ.get("APP_UNREADY_BLOCK_S", "0"))
    if block:
        runtime.on_shutdown(functools.partial(time.sleep, block), phase="unready", name="block")
    yield


app = Starlette(
    routes=[Route("/pid", pid), Route("/work", work), Route("/block", block)],
    lifespan=lifespan,
)

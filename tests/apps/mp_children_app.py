"""Test app: a Starlette app whose lifespan starts a ``multiprocessing`` child that is not a
daemon and never ends (``sleep 60``): at exit ``multiprocessing`` joins it, for as long as it
runs. ``APP_CHILD_IGNORES_TERM=1``: the child ignores SIGTERM too."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette


def sit(ignore_term: bool) -> None:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"APP child {os.getpid()} up", flush=True)
    time.sleep(60)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    ignore = os.environ.get("APP_CHILD_IGNORES_TERM") == "1"
    multiprocessing.get_context("spawn").Process(target=sit, args=(ignore,), name="sitter").start()
    yield


app = Starlette(lifespan=lifespan)

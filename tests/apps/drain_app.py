"""Test child: one of the example services, plus a flush hook that leaves evidence.

Usage: ``python tests/apps/drain_app.py asgi_service|aiohttp_service|streams_service``, with
the examples' environment (PORT, ADMIN_PORT, STATE_PATH, GRACEFUL_STOP_TIMEOUT, ...) and:

FLUSH_MARKER  file the flush hook writes (the phase it ran in), proving flush hooks run
FLUSH_HOLD_S  seconds the flush hook then waits, so a test can look at /readyz and /metrics
              after the drain and before the exit
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path

import graceful

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
example = importlib.import_module(sys.argv[1])


async def main(runtime: graceful.Runtime) -> None:
    async def flush() -> None:
        marker = os.environ.get("FLUSH_MARKER")
        if marker:
            await asyncio.to_thread(Path(marker).write_text, str(runtime.phase))
        await asyncio.sleep(float(os.environ.get("FLUSH_HOLD_S", "0")))

    runtime.on_shutdown(flush, name="test.flush")
    await example.main(runtime)
    print("APP serving", flush=True)


if __name__ == "__main__":
    raise SystemExit(graceful.run(main, config=graceful.Config.from_env()))

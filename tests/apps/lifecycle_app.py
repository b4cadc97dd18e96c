"""A small service for the runtime's process tests, configured by environment variables.

APP_WORK_S       seconds of tracked background work started at startup (0: none)
APP_FLUSH_S      seconds the flush hook takes
APP_FLUSH_RAISE  "1": the flush hook raises
APP_STARTUP_S    seconds the startup hook takes
APP_ZOMBIES      number of orphaned grandchildren to leave behind at startup
"""

from __future__ import annotations

import asyncio
import os

import graceful

try:
    runtime = graceful.Runtime(graceful.Config.from_env())
except graceful.ConfigError as exc:
    raise SystemExit(f"graceful: configuration error: {exc}") from None


@runtime.on_startup
async def slow_startup() -> None:
    print("APP startup-begin", flush=True)
    await asyncio.sleep(float(os.environ.get("APP_STARTUP_S", "0")))
    for _ in range(int(os.environ.get("APP_ZOMBIES", "0"))):
        # The shell exits at once; its child becomes an orphan of ours (we are PID 1) and
        # a zombie when it exits.
        shell = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.2 &")
        await shell.wait()
    print("APP startup-end", flush=True)


@runtime.cleanup_context
async def resource() -> object:
    print("APP resource-open", flush=True)
    yield
    print("APP resource-close", flush=True)


@runtime.on_shutdown
async def flush() -> None:
    await asyncio.sleep(float(os.environ.get("APP_FLUSH_S", "0")))
    if os.environ.get("APP_FLUSH_RAISE") == "1":
        raise RuntimeError("flush failed on purpose")
    print("APP flushed", flush=True)


@runtime.on_shutdown(phase="close")
async def close_last_registered_first() -> None:
    print("APP close-hook", flush=True)


async def work(seconds: float) -> None:
    await asyncio.sleep(seconds)
    print("APP work-done", flush=True)


async def main(rt: graceful.Runtime) -> None:
    seconds = float(os.environ.get("APP_WORK_S", "0"))
    if seconds:
        rt.create_task(work(seconds), name="work")
    print("APP serving", flush=True)


if __name__ == "__main__":
    raise SystemExit(runtime.run(main))

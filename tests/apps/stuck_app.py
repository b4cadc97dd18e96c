"""A service whose stop meets stuck or careless code, chosen by APP_MODE.

blocking-hook   a flush hook calls time.sleep(30): the loop is blocked past the deadline
blocked-loop    a tracked task blocks the loop with time.sleep(30) once the stop begins
asyncgen        an async generator left suspended, whose ``finally`` awaits for 30 s
plain-hook      plain functions as hooks: executor.shutdown and a lambda
leftover        a handler-style task started with plain asyncio.create_task, never tracked
late-signal     an untracked task that, when cancelled at the very end, sends SIGTERM again
embed           main stops the runtime itself; afterwards the handlers must be the originals
atexit          an atexit handler that sleeps 30 s (a tracing exporter's flush, say)
slow-hook       a flush hook that blocks the loop 0.6 s past a 0.3 s hook_timeout, then returns

APP_RUNNER=serve runs ``asyncio.run(runtime.serve(main))`` instead of ``runtime.run(main)``:
the control, with no watchdog.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import graceful

MODE = os.environ["APP_MODE"]
runtime = graceful.Runtime(graceful.Config.from_env())
executor = ThreadPoolExecutor(max_workers=1)
generators: list[AsyncIterator[int]] = []


async def numbers() -> AsyncIterator[int]:
    try:
        yield 1
        yield 2
    finally:
        print("APP generator-closing", flush=True)
        await asyncio.sleep(30)
        print("APP generator-closed", flush=True)


def block() -> None:
    print("APP blocking", flush=True)
    time.sleep(30)


if MODE == "atexit":
    atexit.register(time.sleep, 30)

if MODE == "blocking-hook":
    runtime.on_shutdown(block, name="block")
elif MODE == "plain-hook":
    runtime.on_shutdown(executor.shutdown, phase="close")
    runtime.on_shutdown(lambda: print("APP lambda-ran", flush=True), name="lambda")
elif MODE == "slow-hook":

    def slow() -> None:
        time.sleep(0.9)

    runtime.on_shutdown(slow, timeout=0.3, name="slow")


async def stuck_after_stop(rt: graceful.Runtime) -> None:
    await rt.wait_stopping()
    block()


async def background() -> None:
    await asyncio.sleep(3600)


async def signal_when_cancelled() -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


async def main(rt: graceful.Runtime) -> None:
    if MODE == "blocked-loop":
        rt.create_task(stuck_after_stop(rt), name="stuck")
    elif MODE == "asyncgen":
        gen = numbers()
        generators.append(gen)
        await gen.__anext__()
    elif MODE == "leftover":
        asyncio.create_task(background(), name="untracked-upload")  # noqa: RUF006
    elif MODE == "late-signal":
        asyncio.create_task(signal_when_cancelled(), name="late")  # noqa: RUF006
    elif MODE == "embed":
        rt.request_stop("embedded")
    print("APP serving", flush=True)


if __name__ == "__main__":
    if os.environ.get("APP_RUNNER") == "serve":
        raise SystemExit(asyncio.run(runtime.serve(main)))
    code = runtime.run(main)
    if MODE == "embed":
        print(
            f"APP handlers {signal.getsignal(signal.SIGINT) is signal.default_int_handler} "
            f"{signal.getsignal(signal.SIGTERM) == signal.SIG_DFL}",
            flush=True,
        )
    raise SystemExit(code)

"""Count the walk of a SIGTERM through graceful: the functions and modules from the signal to
the first phase of the stop, per process, measured the same way on any checkout.

    python bench/walk.py [--source DIR] [--workers N]

``--source`` is a checkout of graceful (``git worktree add /tmp/old dc32bf3``); the default
is this one. An idle ``graceful serve app:app`` (plain ASGI) is started with a profiler in
every process (a ``sitecustomize`` on ``PYTHONPATH``) that records each call into graceful's
own code with its ``CLOCK_MONOTONIC`` time; SIGTERM is sent once it answers. Counted, per
process, from the signal until its first ``Shutdown._phase`` (a supervisor: until the stop is
sent to the workers): the distinct graceful functions entered (the hops) and the modules they
belong to; and the modules entered from the signal until the process ended. Not a test:
docs/architecture.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROFILER = r"""
import atexit, json, os, sys, threading, time
_pkg = os.environ["WALK_PACKAGE"]
_calls = []
_lock = threading.Lock()
def _profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        if code.co_filename.startswith(_pkg):
            _calls.append((time.monotonic(), os.path.relpath(code.co_filename, _pkg),
                           code.co_qualname))
def _dump():
    path = os.path.join(os.environ["WALK_OUT"], f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"argv": sys.argv, "calls": list(_calls)}, f)
atexit.register(_dump)
sys.setprofile(_profile)
threading.setprofile(_profile)
# Dumped on the first phase too: a process ended with os._exit never runs atexit.
_orig = None
def _watch(frame, event, arg):
    _profile(frame, event, arg)
    if event == "call" and frame.f_code.co_qualname == "Shutdown._phase":
        _dump()
sys.setprofile(_watch)
threading.setprofile(_watch)
"""

APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def walk(source: Path, workers: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sitecustomize.py").write_text(PROFILER)
        (work / "walk_app.py").write_text(APP)
        out = work / "out"
        out.mkdir()
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": f"{work}{os.pathsep}{source}",
            "WALK_PACKAGE": str(source / "graceful") + os.sep,
            "WALK_OUT": str(out),
            "PORT": str(port),
            "ADMIN_PORT": "",
            "GRACEFUL_LOG_FORMAT": "json",
        }
        argv = [sys.executable, "-m", "graceful", "serve", "walk_app:app"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        with subprocess.Popen(
            argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as process:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server never answered") from None
                    time.sleep(0.1)
            time.sleep(2.0)  # every worker ready, the startup's calls over
            signal_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        return [count(json.loads(p.read_text()), signal_at) for p in sorted(out.glob("*.json"))]


def count(dump: dict[str, object], signal_at: float) -> dict[str, object]:
    calls = [c for c in dump["calls"] if c[0] >= signal_at]  # type: ignore[union-attr]
    first_phase = next((i for i, c in enumerate(calls) if c[2] == "Shutdown._phase"), len(calls))
    # A supervisor has no phases: its walk ends when the stop leaves for the workers.
    first_send = next((i for i, c in enumerate(calls) if c[2] == "ControlChannel.send"), len(calls))
    to_phase = calls[: min(first_phase, first_send) + 1]
    hops = list(dict.fromkeys(f"{c[1]}:{c[2]}" for c in to_phase))
    return {
        "process": "runtime" if first_phase < len(calls) else "supervisor",
        # to its first phase (a runtime), or to the stop sent to the workers (a supervisor)
        "hops_to_first_phase": len(hops),
        "modules_to_first_phase": sorted({c[1] for c in to_phase}),
        "modules_to_exit": len({c[1] for c in calls}),
        "modules_entered": sorted({c[1] for c in calls}),
        "hops": hops,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    for process in walk(args.source.resolve(), args.workers):
        if not args.verbose:
            process.pop("hops")
            process.pop("modules_entered")
        print(json.dumps(process, indent=1 if args.verbose else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

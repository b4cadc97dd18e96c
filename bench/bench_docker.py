"""`docker stop` of an idle container: graceful's examples beside plain servers and the floor.

Every case runs in the example image (same Python, same packages) as PID 1 in exec form, is
started, waited for until its ready line appears in the logs, then stopped with the Docker CLI
(`docker stop -t 10`); the wall time of that command and the exit code are recorded. The floor
is a process whose SIGTERM handler calls ``os._exit(0)`` at once: what the engine itself costs.
Each example also runs ended by ``graceful.runner.end_process`` (its exit without the
interpreter's module teardown; inlined when the image predates it). Rounds alternate between
the cases; the table shows medians. Needs the images of `docker/build.sh`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

IMAGE = "graceful-example-asgi"
AIOHTTP_IMAGE = "graceful-example-aiohttp"
PY = "/opt/venv/bin/python"

FLOOR = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(3600)\n"
)
UVICORN = (
    "import uvicorn\n"
    "async def app(scope, receive, send):\n"
    "    if scope['type'] == 'http':\n"
    "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
    "        await send({'type': 'http.response.body', 'body': b'ok'})\n"
    "uvicorn.run(app, host='0.0.0.0', port=8080, timeout_graceful_shutdown=5, lifespan='off')\n"
)
AIOHTTP = (
    "from aiohttp import web\n"
    "async def ok(request):\n"
    "    return web.Response(text='ok')\n"
    "app = web.Application()\n"
    "app.router.add_get('/', ok)\n"
    "web.run_app(app, port=8080, shutdown_timeout=5)\n"
)

# The image's own CMD (``python /app/service.py``), ended by ``end_process``: its steps are
# inlined for an image built before it existed.
END_PROCESS = (
    "import atexit, os, runpy, sys, threading\n"
    "sys.argv = ['/app/service.py']\n"
    "sys.path.insert(0, '/app/examples')\n"
    "try:\n"
    "    runpy.run_path('/app/service.py', run_name='__main__')\n"
    "    code = 0\n"
    "except SystemExit as exc:\n"
    "    code = exc.code if isinstance(exc.code, int) else 1\n"
    "try:\n"
    "    from graceful.runner import end_process\n"
    "except ImportError:\n"
    "    def end_process(code):\n"
    "        threading._shutdown()\n"
    "        atexit._run_exitfuncs()\n"
    "        sys.stdout.flush(), sys.stderr.flush()\n"
    "        os._exit(code)\n"
    "end_process(code)\n"
)

# name -> (image, command or None for the image's own CMD, ready line)
CASES: dict[str, tuple[str, list[str] | None, str]] = {
    "floor (os._exit in the handler)": (IMAGE, [PY, "-c", FLOOR], "ready"),
    "graceful + uvicorn (example)": (IMAGE, None, '"service.ready"'),
    "graceful + aiohttp (example)": (AIOHTTP_IMAGE, None, '"service.ready"'),
    "graceful + uvicorn (example), end_process": (
        IMAGE,
        [PY, "-c", END_PROCESS],
        '"service.ready"',
    ),
    "graceful + aiohttp (example), end_process": (
        AIOHTTP_IMAGE,
        [PY, "-c", END_PROCESS],
        '"service.ready"',
    ),
    "uvicorn 0.54, timeout_graceful_shutdown=5": (IMAGE, [PY, "-c", UVICORN], "Uvicorn running"),
    "aiohttp run_app, shutdown_timeout=5": (IMAGE, [PY, "-c", AIOHTTP], "Running on"),
}


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def _logs(cid: str) -> str:
    done = subprocess.run(["docker", "logs", cid], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def measure(image: str, command: list[str] | None, ready: str, count: int = 1) -> tuple[float, int]:
    """``docker stop`` wall time and exit code, once ``ready`` was logged ``count`` times."""
    cid = _docker(
        "run",
        "-d",
        "--label",
        "graceful.bench=docker",
        "--network",
        "none",
        image,
        *(command or []),
    )
    try:
        deadline = time.monotonic() + 30
        while _logs(cid).count(ready) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{image} {command}: never printed {ready!r}")
            time.sleep(0.05)
        time.sleep(0.2)  # let startup settle: idle means idle
        started = time.perf_counter()
        _docker("stop", "-t", "10", cid)
        seconds = time.perf_counter() - started
        code = int(_docker("inspect", cid, "--format", "{{.State.ExitCode}}"))
        return seconds, code
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "docker.md"))
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    codes: dict[str, set[int]] = {name: set() for name in CASES}
    for _ in range(args.rounds):
        for name, (image, command, ready) in CASES.items():
            seconds, code = measure(image, command, ready)
            times[name].append(seconds)
            codes[name].add(code)
    floor = statistics.median(times[next(iter(CASES))])
    lines = [
        "# `docker stop`, idle container",
        "",
        (
            f"`python bench/bench_docker.py --rounds {args.rounds}`: "
            "Debian's Python 3.11 in the example image, Docker engine "
            f"{_docker('version', '--format', '{{.Server.Version}}')}, rounds alternating, "
            "medians. The floor is what the engine costs for a process that exits at once."
        ),
        "",
        "| process (PID 1, exec form) | docker stop | above the floor | exit code |",
        "|---|---:|---:|---|",
    ]
    for name in CASES:
        median = statistics.median(times[name])
        lines.append(
            f"| {name} | {median * 1000:.0f} ms | {(median - floor) * 1000:+.0f} ms "
            f"| {', '.join(map(str, sorted(codes[name])))} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

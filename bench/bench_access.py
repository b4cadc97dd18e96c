"""Benchmark: ``graceful serve app:app`` against ``uvicorn app:app``, access lines on and off.

Run: ``python bench/bench_access.py [--rounds 5] [--seconds 5]``. Prints a markdown report
and writes it to ``bench/results/access.md``. Not a test: numbers depend on the machine.

The same plain Starlette app (``GET /`` answers ``ok``), served by each command with its
defaults (uvloop, uvicorn's HTTP parser, one process), stdout and stderr to a file as in a
container whose runtime collects the log:

- ``graceful serve bench_access:app``: its JSON access line, one per request;
- ``uvicorn bench_access:app``: its plain-text access line, one per request;
- both again with ``--no-access-log``.

The server is pinned to the first CPU and the load client (wrk, 32 keep-alive connections;
the Python client of ``bench_drain`` where wrk is not installed) to the last, after one
second of warm-up. Each round runs every server in turn, each round starting with another,
so drift of a shared machine hits them alike. Figures: requests per second and the server's
CPU time (user + system) per request, which other load on a shared machine moves far less
than requests per second; the ratios are medians of the per-round ratios (graceful ÷ uvicorn,
measured back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "access.md"
GUARD = 30.0  # seconds: hang guard for any single wait
CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU = CPUS[0]
CLIENT_CPU = CPUS[-1]
CONNECTIONS = 32
SERVERS = ["graceful serve", "uvicorn"]
MODES = ["access log on", "access log off"]
LOAD: list[float] = []  # the machine's load average (1 min) before and after the run


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


#: The app both commands serve (``bench_access:app``).
app = Starlette(routes=[Route("/", home)])


def command(kind: str, mode: str, port: int) -> list[str]:
    """The server's command line: its defaults, plus ``--no-access-log`` in the off mode."""
    where = ["--host", "127.0.0.1", "--port", str(port), "--app-dir", str(ROOT / "bench")]
    off = ["--no-access-log"] if mode == "access log off" else []
    tool = ["-m", "graceful", "serve"] if kind == "graceful serve" else ["-m", "uvicorn"]
    return ["taskset", "-c", str(SERVER_CPU), sys.executable, *tool, "bench_access:app", *where,
            *off]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before serving")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError("server not ready in time")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, seconds: float) -> int:
    """Requests answered in ``seconds`` of load from the client CPU."""
    if shutil.which("wrk"):
        argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{CONNECTIONS}",
                f"-d{seconds:g}s", f"http://127.0.0.1:{port}/"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        found = re.search(r"(\d+) requests in", out)
        if found is None or "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk: {out}")
        return int(found.group(1))
    import bench_drain  # beside this file: the Python client, pinned like wrk

    class Target:
        def __init__(self, port: int) -> None:
            self.port = port

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        done, _ = asyncio.run(bench_drain.load(Target(port), seconds))  # type: ignore[arg-type]
    finally:
        os.sched_setaffinity(0, before)
    return done


def measure(kind: str, mode: str, seconds: float, tmp: Path) -> dict[str, float]:
    """One server, one mode: requests per second, CPU µs per request, log bytes per request.

    A server that does not start is tried twice more (the tree may be mid-edit on a shared
    machine), then its log is shown.
    """
    for attempt in range(3):
        try:
            return _measure(kind, mode, seconds, tmp)
        except ServerFailed as failed:
            print(f"{kind} ({mode}) did not start: {failed}", file=sys.stderr)
            if attempt == 2:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


class ServerFailed(RuntimeError):
    """The server exited, or did not answer, before serving."""


def _measure(kind: str, mode: str, seconds: float, tmp: Path) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRACEFUL_", "UVICORN_"))}
    for name in ("ADMIN_PORT", "WEB_CONCURRENCY", "PORT", "HOST"):
        env.pop(name, None)
    log = tmp / f"{kind.replace(' ', '-')}-{mode.replace(' ', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command(kind, mode, port), stdout=out, stderr=out, env=env)
    try:
        try:
            wait_ready(port, proc)
        except RuntimeError as exc:
            raise ServerFailed(f"{exc}; its log ends:\n{log.read_text()[-2000:]}") from None
        load(port, 1.0)  # warm-up
        cpu, size = cpu_seconds(proc.pid), log.stat().st_size
        started = time.perf_counter()
        done = load(port, seconds)
        elapsed = time.perf_counter() - started
        cpu, size = cpu_seconds(proc.pid) - cpu, log.stat().st_size - size
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "requests_per_s": done / elapsed,
        "cpu_us_per_request": cpu / done * 1e6,
        "log_bytes_per_request": size / done,
    }


Results = dict[str, dict[str, list[dict[str, float]]]]  # mode -> server -> one per round


def run(rounds: int, seconds: float) -> Results:
    results: Results = {mode: {kind: [] for kind in SERVERS} for mode in MODES}
    LOAD.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = SERVERS[r % 2 :] + SERVERS[: r % 2]  # each round starts with another
            for mode in MODES:
                for kind in order:
                    got = measure(kind, mode, seconds, Path(tmp))
                    results[mode][kind].append(got)
                    print(f"round {r + 1} {mode:15} {kind:15} {got}", file=sys.stderr)
    LOAD.append(os.getloadavg()[0])
    return results


def report(results: Results, rounds: int, seconds: float) -> str:
    client = "wrk" if shutil.which("wrk") else "the Python client of bench_drain"
    lines = [
        "# Access lines: `graceful serve` against `uvicorn`",
        "",
        (
            f"One run of `python bench/bench_access.py --rounds {rounds} --seconds {seconds:g}` "
            f"(in `make bench`): Python {sys.version.split()[0]}, {os.cpu_count()} CPUs shared "
            f"with other work, so **read the CPU-per-request ratios first**: requests per "
            f"second move with whatever else the machine runs, the CPU a request costs far "
            f"less. A plain Starlette app (`GET /` → `ok`) served by `graceful serve "
            f"bench_access:app` and `uvicorn bench_access:app` with their defaults (one "
            f"process, uvloop, the same HTTP parser), stdout and stderr to a file; server on "
            f"CPU {SERVER_CPU}, {client} with {CONNECTIONS} keep-alive connections on CPU "
            f"{CLIENT_CPU}, {seconds:g} s after 1 s of warm-up; {rounds} rounds, each starting "
            f"with the other server. Ratios are medians of the per-round ratios."
        ),
        "",
        (
            "| access lines | graceful req/s | uvicorn req/s | req/s ratio | graceful CPU µs/req "
            "| uvicorn CPU µs/req | CPU ratio (uvicorn ÷ graceful) | log bytes/req (g / u) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    for mode in MODES:
        ours, theirs = results[mode]["graceful serve"], results[mode]["uvicorn"]

        rate = statistics.median(
            a["requests_per_s"] / b["requests_per_s"] for a, b in zip(ours, theirs, strict=True)
        )
        cpu = statistics.median(
            b["cpu_us_per_request"] / a["cpu_us_per_request"]
            for a, b in zip(ours, theirs, strict=True)
        )
        lines.append(
            f"| {mode.removeprefix('access log ')} | {med(ours, 'requests_per_s'):,.0f} "
            f"| {med(theirs, 'requests_per_s'):,.0f} | **{rate:.3f}** "
            f"| {med(ours, 'cpu_us_per_request'):.1f} | {med(theirs, 'cpu_us_per_request'):.1f} "
            f"| **{cpu:.3f}** | {med(ours, 'log_bytes_per_request'):.0f} / "
            f"{med(theirs, 'log_bytes_per_request'):.0f} |"
        )
    line_cost = [
        med(results["access log on"][kind], "cpu_us_per_request")
        - med(results["access log off"][kind], "cpu_us_per_request")
        for kind in SERVERS
    ]
    load = " and ".join(f"{value:.1f}" for value in LOAD)
    lines += [
        "",
        (
            f"The access line's own CPU (on minus off): graceful {line_cost[0]:.1f} µs per "
            f"request, uvicorn {line_cost[1]:.1f} µs. The machine's load average was {load} at "
            f"the start and the end of the run (other agents' tests on the same 2 CPUs)."
        ),
        "",
        "A ratio above 1 favours graceful: more requests per second, or less CPU per request.",
        'graceful\'s access line is one JSON object (`"event": "http.request"`, the request',
        "as fields, with the level, logger, timestamp and worker of its other lines), built and",
        "written straight to stdout; uvicorn's is a line of text through `logging`. With the lines",
        "off on both, what graceful adds is its per-request middleware (the in-flight count for",
        "the drain, `Connection: close` once a stop has begun, event streams ended at the drain).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="load window per server")
    args = parser.parse_args(argv)
    results = run(args.rounds, args.seconds)
    text = report(results, args.rounds, args.seconds)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

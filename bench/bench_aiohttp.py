"""Benchmark: an aiohttp app under ``graceful serve`` against the same app on ``web.run_app``.

Run: ``python bench/bench_aiohttp.py [--rounds 5] [--seconds 5] [--loop uvloop]``. Prints a
markdown report and writes it to ``bench/results/aiohttp.md``. Not a test: numbers depend on
the machine.

The same ``aiohttp.web.Application`` (``GET /`` answers ``ok``), one process each, on the same
event loop (uvloop by default, as ``graceful serve`` picks it; ``--loop asyncio`` for both on
the standard loop), stdout and stderr to a file as in a container whose runtime collects the
log:

- ``graceful serve bench_aiohttp:app`` (graceful's aiohttp path: its per-request tracking for
  the drain, ``Connection: close`` once a stop has begun, event streams ended at the drain);
- ``web.run_app(app)``, aiohttp's own runner.

Twice: access lines off on both (``--no-access-log``; ``access_log=None``), then on on both
(graceful's JSON line; aiohttp's default ``AccessLogger`` line, with ``logging`` set to INFO so
that it is written at all: ``run_app`` adds no handler outside debug mode).

The load client (wrk, 32 keep-alive connections, as ``bench_access``) is pinned to the last
CPU and the server with ``taskset`` to the others. Each round runs both servers in turn, each
round starting with the other, so drift of a shared machine hits them alike. Figures:
requests per second and the server's CPU time (user + system) per request, which other load
moves far less; the ratios are medians of the per-round ratios (graceful ÷ aiohttp, measured
back to back). Each round also runs both servers at once (each with its own wrk and half the
connections, over the same seconds), where drift cannot favour either: its CPU-per-request ratio
is the steadiest figure. With ``--profile-seconds`` (5 by default), py-spy's profile of
graceful's server under the same load ends the report.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from aiohttp.log import access_logger

# Beside this file: the helpers of the other benchmarks (a script's directory is on sys.path).
from bench_access import CONNECTIONS, GUARD, ServerFailed, cpu_seconds, free_port, load, wait_ready
from bench_workers import CLIENT_CPU, SERVER_CPUS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "aiohttp.md"
SERVERS = ["graceful serve", "aiohttp run_app"]
MODES = ["access log off", "access log on"]
#: Both servers at once on the server CPUs, each loaded by its own wrk on the client CPU: they
#: share whatever the machine gives them in the same seconds, so the ratio of the requests each
#: served is the ratio of their costs per request, without the drift between two windows.
AT_ONCE = "access log off, both at once"
LOAD: list[float] = []  # the machine's load average (1 min) before and after the run


async def home(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    """The app both serve: ``GET /`` → ``ok``."""
    app = web.Application()
    app.router.add_get("/", home)
    return app


#: The app ``graceful serve bench_aiohttp:app`` serves (the plain server builds its own).
app = make_app()


def serve_plain(port: int, access_log: bool, loop_name: str) -> None:
    """aiohttp's own runner, as an app's ``main`` would call it (the child side)."""
    if access_log:
        # Without a handler at INFO, aiohttp's AccessLogger is disabled and writes nothing.
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    loop = None
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=port,
        access_log=access_logger if access_log else None,
        print=None,
        loop=loop,
    )


def command(kind: str, mode: str, port: int, loop_name: str) -> list[str]:
    """The server's command line, pinned to the server CPUs."""
    on = mode == "access log on"
    if kind == "graceful serve":
        argv = [sys.executable, "-m", "graceful", "serve", "bench_aiohttp:app",
                "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(ROOT / "bench"),
                "--loop", loop_name, *([] if on else ["--no-access-log"])]  # fmt: skip
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--plain", str(port),
                "--loop", loop_name, *(["--plain-access-log"] if on else [])]  # fmt: skip
    return ["taskset", "-c", SERVER_CPUS, *argv]


def measure(kind: str, mode: str, seconds: float, tmp: Path, loop_name: str) -> dict[str, float]:
    """One server, one mode: requests per second, CPU µs per request, log bytes per request.

    A server that does not start is tried twice more (the tree may be mid-edit on a shared
    machine), then its log is shown.
    """
    for attempt in range(3):
        try:
            return _measure(kind, mode, seconds, tmp, loop_name)
        except ServerFailed as failed:
            print(f"{kind} ({mode}) did not start: {failed}", file=sys.stderr)
            if attempt == 2:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def _measure(kind: str, mode: str, seconds: float, tmp: Path, loop_name: str) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACEFUL_")}
    for name in ("ADMIN_PORT", "WEB_CONCURRENCY", "PORT", "HOST"):
        env.pop(name, None)
    log = tmp / f"{kind.replace(' ', '-')}-{mode.replace(' ', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command(kind, mode, port, loop_name), stdout=out, stderr=out,
                                env=env)  # fmt: skip
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


def profile(seconds: float, tmp: Path, loop_name: str) -> str:
    """Where graceful's server spends its CPU under load: py-spy's samples, as markdown.

    ``graceful serve`` with access lines off, loaded by wrk as above; py-spy samples it at
    250 Hz for ``seconds``. Returns the self time of the busiest lines and the share of the
    samples in graceful's own frames; empty when py-spy or wrk is missing.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() or not shutil.which("wrk"):
        return ""
    port = free_port()
    raw = tmp / "profile.txt"
    with (tmp / "profile.log").open("wb") as out:
        proc = subprocess.Popen(command("graceful serve", "access log off", port, loop_name),
                                stdout=out, stderr=out)  # fmt: skip
    try:
        wait_ready(port, proc)
        load(port, 1.0)
        argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{CONNECTIONS}",
                f"-d{seconds + 2:g}s", f"http://127.0.0.1:{port}/"]  # fmt: skip
        wrk = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        subprocess.run([spy, "record", "-p", str(proc.pid), "-d", f"{seconds:g}", "-r", "250",
                        "-f", "raw", "-o", str(raw), "--nonblocking"],
                       capture_output=True, check=False)  # fmt: skip
        wrk.wait(GUARD + seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(GUARD)
    if not raw.exists():
        return ""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    graceful = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        if "graceful/integrations/" in frames[-1]:
            graceful += int(count)
    if not total:
        return ""
    rows = [f"| {n / total:.1%} | `{frame}` |" for frame, n in own.most_common(12)]
    return "\n".join(
        [
            "",
            "## Profile: graceful's server under the same load",
            "",
            (
                f"py-spy, {total} samples at 250 Hz over {seconds:g} s of `graceful serve` with "
                f"access lines off. Self time of the busiest lines (a line that awaits also counts "
                f"the switch into and out of the coroutine it awaits):"
            ),
            "",
            "| self | line |",
            "|---:|---|",
            *rows,
            "",
            (
                f"Lines of graceful's own per-request code (`graceful/integrations/`): "
                f"**{graceful / total:.1%}** of the samples; the rest is aiohttp, uvloop and the "
                f"app, as in `web.run_app`."
            ),
        ]
    )


def measure_both(seconds: float, tmp: Path, loop_name: str) -> dict[str, dict[str, float]]:
    """Both servers at once, access lines off: per server, requests per second and CPU µs per
    request, over the same window (each with half the connections)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {kind: free_port() for kind in SERVERS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACEFUL_")}
    try:
        for kind in SERVERS:
            with (tmp / f"at-once-{kind.replace(' ', '-')}.log").open("wb") as log:
                argv = command(kind, "access log off", ports[kind], loop_name)
                procs[kind] = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        for kind in SERVERS:
            wait_ready(ports[kind], procs[kind])

        def wrk(kind: str, window: float) -> subprocess.Popen[str]:
            argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{CONNECTIONS // 2}",
                    f"-d{window:g}s", f"http://127.0.0.1:{ports[kind]}/"]  # fmt: skip
            return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

        for client in [wrk(kind, 1.0) for kind in SERVERS]:  # warm-up
            client.communicate(timeout=GUARD)
        cpu = {kind: cpu_seconds(procs[kind].pid) for kind in SERVERS}
        clients = {kind: wrk(kind, seconds) for kind in SERVERS}
        outs = {kind: client.communicate(timeout=GUARD + seconds)[0]
                for kind, client in clients.items()}  # fmt: skip
        cpu = {kind: cpu_seconds(procs[kind].pid) - cpu[kind] for kind in SERVERS}
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(GUARD)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    got = {}
    for kind, text in outs.items():
        found = re.search(r"(\d+) requests in", text)
        if found is None or "Non-2xx" in text or "Socket errors" in text:
            raise RuntimeError(f"wrk: {text}")
        done = int(found.group(1))
        got[kind] = {
            "requests_per_s": done / seconds,
            "cpu_us_per_request": cpu[kind] / done * 1e6,
            "log_bytes_per_request": 0.0,
        }
    return got


Results = dict[str, dict[str, list[dict[str, float]]]]  # mode -> server -> one per round


def run(rounds: int, seconds: float, loop_name: str, modes: list[str]) -> Results:
    at_once = shutil.which("wrk") is not None  # two clients at once: wrk's, not the Python one
    kept = [*modes, AT_ONCE] if at_once else modes
    results: Results = {mode: {kind: [] for kind in SERVERS} for mode in kept}
    LOAD.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = SERVERS[r % 2 :] + SERVERS[: r % 2]  # each round starts with another
            for mode in modes:
                for kind in order:
                    got = measure(kind, mode, seconds, Path(tmp), loop_name)
                    results[mode][kind].append(got)
                    print(f"round {r + 1} {mode:15} {kind:15} {got}", file=sys.stderr)
            if at_once:
                for kind, got in measure_both(seconds, Path(tmp), loop_name).items():
                    results[AT_ONCE][kind].append(got)
                    print(f"round {r + 1} {AT_ONCE} {kind:15} {got}", file=sys.stderr)
    LOAD.append(os.getloadavg()[0])
    return results


def ratios(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> tuple[float, float]:
    """Medians of the per-round ratios: req/s (ours ÷ theirs), CPU (theirs ÷ ours)."""
    pairs = list(zip(ours, theirs, strict=True))
    rate = statistics.median(a["requests_per_s"] / b["requests_per_s"] for a, b in pairs)
    cpu = statistics.median(b["cpu_us_per_request"] / a["cpu_us_per_request"] for a, b in pairs)
    return rate, cpu


def report(results: Results, rounds: int, seconds: float, loop_name: str, notes: str) -> str:
    lines = [
        "# aiohttp: `graceful serve` against `web.run_app`",
        "",
        (
            f"One run of `python bench/bench_aiohttp.py --rounds {rounds} --seconds {seconds:g}"
            f"` (in `make bench`): Python {sys.version.split()[0]}, {os.cpu_count()} CPUs shared "
            f"with other work, so **read the CPU-per-request ratios first**. The same aiohttp "
            f"app (`GET /` → `ok`) served by `graceful serve bench_aiohttp:app` and by "
            f"`web.run_app(app)`, one process each, both on {loop_name}, stdout and stderr to a "
            f"file; server on CPU {SERVER_CPUS}, wrk with {CONNECTIONS} keep-alive connections "
            f"on CPU {CLIENT_CPU}, {seconds:g} s after 1 s of warm-up; {rounds} rounds, each "
            f"starting with the other server. Ratios are medians of the per-round ratios; "
            f"above 1 favours graceful."
        ),
        "",
        (
            "The last table has both servers running at once on the same CPU, each loaded by "
            "its own wrk with half the connections, over the same seconds: whatever else the "
            "machine runs then hits both alike, without the drift between two windows. "
            "**Read its CPU ratio first** on a shared machine (its requests ratio equals it "
            "only while the server CPU is the bottleneck, not the clients' CPU)."
        ),
    ]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    for mode in results:
        ours, theirs = results[mode]["graceful serve"], results[mode]["aiohttp run_app"]
        rate, cpu = ratios(ours, theirs)
        lines += [
            "",
            f"## {mode.capitalize()}",
            "",
            (
                "| graceful req/s | aiohttp req/s | req/s ratio | graceful CPU µs/req "
                "| aiohttp CPU µs/req | CPU ratio (aiohttp ÷ graceful) | log bytes/req (g / a) |"
            ),
            "|---:|---:|---:|---:|---:|---:|---:|",
            (
                f"| {med(ours, 'requests_per_s'):,.0f} | {med(theirs, 'requests_per_s'):,.0f} "
                f"| **{rate:.3f}** | {med(ours, 'cpu_us_per_request'):.1f} "
                f"| {med(theirs, 'cpu_us_per_request'):.1f} | **{cpu:.3f}** "
                f"| {med(ours, 'log_bytes_per_request'):.0f} / "
                f"{med(theirs, 'log_bytes_per_request'):.0f} |"
            ),
        ]
    load_avg = " and ".join(f"{value:.1f}" for value in LOAD)
    lines += [
        "",
        (
            f"The machine's load average was {load_avg} at the start and the end of the run "
            f"(other work on the same CPUs). Access lines on: graceful writes one JSON object "
            f"per request (the request as fields, with the level, timestamp and logger of its "
            f"other lines) straight to stdout; aiohttp its Apache-style line through `logging`."
        ),
    ]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


#: What the results file says about the path measured (kept with the code that it describes).
NOTES = """
What graceful adds per request on this path (`graceful/integrations/aiohttp.py` and
`_aiohttp_requests.py`): the server's request handler is wrapped, not given a middleware (one
middleware makes aiohttp build and run its middleware chain, with its own
`_fix_request_current_app`, for every request), and stores the request under its task for the
drain and the deadline's cancel, sending the response before the request counts as done; the
request class does the `on_response_prepare` step inline, no signal sent (for a `web.Response`
before any stop: two checks). Before (a tracking middleware, a `TaskSet` context manager, a count
per connection, a task name per request and an `on_response_prepare` handler), the first run of
this benchmark (3 rounds of 3 s, access lines off) gave **0.693** of aiohttp's requests per
second and **0.635** of its CPU per request (55 µs against 35 µs).

Where the rest goes, measured both at once against `web.run_app` (8 s runs, 3 each, while
writing the change): with the request class and a wrapper that only awaits the app, graceful
served 0.98-1.0 of aiohttp's requests; the wrapper's bookkeeping (the task, the request stored
under it and deleted, the waiters checked, the response sent in the wrapper) takes it to
0.95-0.97, about 1.4 µs a request on this app that does nothing. That bookkeeping is what the
drain and the deadline need (what is in flight, on which connection, which task to cancel),
and it is a share of the request's cost only for a handler this small. Of it, on Python 3.11:
`asyncio.current_task()` is a Python function there (C from 3.12), 2 % of the samples in the
profile below before the handler read the tasks' own dictionary instead. `graceful serve` itself
measured about 2 % above the same integration started from a script with `graceful.run` (both at
once, 8 s, twice each way round); not traced to a cause in the time given.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="load window per server")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--only-off", action="store_true", help="skip the access-log-on table")
    parser.add_argument(
        "--profile-seconds", type=float, default=5.0, help="py-spy window (0: no profile)"
    )
    parser.add_argument("--plain", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--plain-access-log", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain is not None:
        serve_plain(args.plain, args.plain_access_log, args.loop)
        return 0
    modes = MODES[:1] if args.only_off else MODES
    results = run(args.rounds, args.seconds, args.loop, modes)
    notes = NOTES
    if args.profile_seconds > 0:
        with tempfile.TemporaryDirectory() as tmp:
            notes += profile(args.profile_seconds, Path(tmp), args.loop)
    text = report(results, args.rounds, args.seconds, args.loop, notes)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

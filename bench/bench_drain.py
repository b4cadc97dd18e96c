"""Benchmark: how fast and how cleanly real servers stop under graceful, beside their peers.

Run: ``python bench/bench_drain.py [--rounds 5] [--seconds 3]``. Prints a markdown report and
writes it to ``bench/results/drain.md``. Not a test: numbers depend on the machine.

Servers, each a child process serving the same plain ASGI / aiohttp app on 127.0.0.1:

- ``graceful+uvicorn``: ``examples/asgi_service.py`` (graceful runtime, uvloop);
- ``graceful+aiohttp``: ``examples/aiohttp_service.py``;
- ``uvicorn``: the same ASGI app on ``uvicorn.Server.run()``, ``timeout_graceful_shutdown=5``;
- ``aiohttp``: the same aiohttp app on ``web.run_app(shutdown_timeout=5)``.

Figures (median of the rounds):

1. idle: SIGTERM to process exit, nothing connected;
2. 100 idle keep-alive connections: SIGTERM to the last of them closed, and to exit;
3. one 500 ms request in flight at SIGTERM: exit minus the moment its answer arrived;
4. throughput (``GET /work?ms=0``, 32 keep-alive connections) of the example with graceful's
   tracking middleware against the same app on plain uvicorn / aiohttp.

Then where the milliseconds of a stop go: ``graceful serve`` of a one-route app (uvicorn and
aiohttp, one process), idle and with 100 idle keep-alive connections, the moments of its own
log lines (signal received, each phase's end, the report) and of the exit, from the SIGTERM;
each ending as ``python -m graceful`` does and through ``graceful.runner.end_process``
(``--launch end``), rounds alternating, beside a process that calls ``os._exit`` in its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "drain.md"
SERVERS = ["graceful+uvicorn", "graceful+aiohttp", "uvicorn", "aiohttp"]
GUARD = 30.0  # seconds: hang guard for any single wait

REQUEST = b"GET /work?ms=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

# The stop's timeline: ``graceful serve`` of the apps below, ended two ways.
TIMELINE = {
    "uvicorn, sys.exit": ["-m", "graceful", "serve", "bench_drain:asgi_app"],
    "uvicorn, end_process": [__file__, "--launch", "serve", "bench_drain:asgi_app"],
    "aiohttp, sys.exit": ["-m", "graceful", "serve", "bench_drain:aiohttp_app", "--factory"],
    "aiohttp, end_process": [__file__, "--launch", "serve", "bench_drain:aiohttp_app", "--factory"],
    "floor": [
        "-c",
        (
            "import os, signal; signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
            "print('ready', flush=True); signal.pause()"
        ),
    ],
}
PHASES = ["unready", "delay", "stop_accept", "drain", "cancel", "flush", "close"]


async def asgi_app(
    scope: dict[str, object],
    receive: Callable[[], Awaitable[dict[str, object]]],
    send: Callable[[dict[str, object]], Awaitable[None]],
) -> None:
    """One route, answering ``ok``: the app of the timeline (``graceful serve``)."""
    if scope["type"] != "http":
        return  # lifespan "auto": an app that does not take part is left out
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def aiohttp_app() -> object:
    """The same route on aiohttp (a factory: aiohttp is imported only when served)."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/work", ok)
    return app


def launch(argv: list[str]) -> None:
    """``python -m graceful ...argv``, ended by ``graceful.runner.end_process``."""
    sys.argv = [sys.argv[0], *argv]
    from graceful.__main__ import main as graceful_main
    from graceful.runner import end_process

    end_process(graceful_main())


# -- child side: the peers, run plainly -------------------------------------------------------


def run_peer(kind: str, port: int, state: str) -> None:
    """Serve the example app on a plain server, stopping the way that server does."""
    sys.path.insert(0, str(ROOT / "examples"))
    from graceful.state import DurableStore

    store = DurableStore(state)  # /work never touches it; it is not even opened
    if kind == "uvicorn":
        import asgi_service
        import uvicorn

        config = uvicorn.Config(
            asgi_service.make_app(store),
            host="127.0.0.1",
            port=port,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        uvicorn.Server(config).run()
    else:
        import aiohttp_service
        import uvloop
        from aiohttp import web

        # uvloop, like uvicorn's default and graceful's, so the loops do not differ.
        web.run_app(
            aiohttp_service.make_app(store),
            host="127.0.0.1",
            port=port,
            shutdown_timeout=5,
            access_log=None,
            print=None,
            loop=uvloop.new_event_loop(),
        )


# -- parent side ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(
        self,
        kind: str,
        tmp: Path,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.argv = argv
        self.port = free_port()
        self.tmp = tmp
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        state = str(self.tmp / f"{self.kind}-{self.port}.sqlite")
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "STATE_PATH": state,
            "GRACEFUL_STOP_TIMEOUT": "10",
            "GRACEFUL_LOG_FORMAT": "json",
            **self.env,
        }
        env.pop("ADMIN_PORT", None)
        if self.argv is not None:
            argv = [sys.executable, *self.argv]
        elif self.kind.startswith("graceful+"):
            script = "asgi_service.py" if self.kind.endswith("uvicorn") else "aiohttp_service.py"
            argv = [sys.executable, str(ROOT / "examples" / script)]
        else:
            argv = [sys.executable, __file__, "--peer", self.kind, str(self.port), state]
        self.log = self.tmp / f"{self.kind}-{self.port}.log".replace(" ", "_").replace(",", "")
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=out, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT / "bench"
            )
        async with asyncio.timeout(GUARD):
            while self.kind == "floor":  # no listener: its line says it is ready
                if self.log.read_bytes():
                    return
                await asyncio.sleep(0.01)
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    def terminate(self) -> float:
        assert self.proc is not None
        now = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGTERM)
        return now

    async def exited(self) -> float:
        assert self.proc is not None
        async with asyncio.timeout(GUARD):
            await self.proc.wait()
        return time.perf_counter()

    def report_ms(self) -> dict[str, float]:
        """graceful's own account of the stop, from its ``shutdown.report`` event."""
        for line in self.log.read_text().splitlines():
            if '"shutdown.report"' in line:
                return {"report_ms": json.loads(line)["seconds"] * 1000}
        return {}

    def timeline(self, t0: float) -> dict[str, float]:
        """ms from the SIGTERM (wall clock ``t0``) to each of the stop's log lines."""
        found: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            name = event.get("event")
            if name == "phase.finished":
                name = f"phase {event['phase']}"
            elif name not in ("signal.received", "shutdown.started", "shutdown.report"):
                continue
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            found.setdefault(str(name), (at - t0) * 1000)
        return found

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, request: bytes = REQUEST) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return int(head[9:12])

    async def eof(self) -> float:
        with_data = await self.reader.read(1)
        assert with_data == b"", with_data
        return time.perf_counter()

    def close(self) -> None:
        self.writer.close()


async def idle_stop(server: Server) -> dict[str, float]:
    t0 = server.terminate()
    return {"idle_exit_ms": (await server.exited() - t0) * 1000, **server.report_ms()}


async def keepalive_stop(server: Server) -> dict[str, float]:
    conns = [await Conn.open(server.port) for _ in range(100)]
    for conn in conns:
        await conn.get()
    eofs = [asyncio.create_task(conn.eof()) for conn in conns]
    t0 = server.terminate()
    closed = await asyncio.gather(*eofs)
    exited = await server.exited()
    for conn in conns:
        conn.close()
    return {
        "keepalive_closed_ms": (max(closed) - t0) * 1000,
        "keepalive_exit_ms": (exited - t0) * 1000,
    }


async def inflight_stop(server: Server) -> dict[str, float]:
    conn = await Conn.open(server.port)
    answer = asyncio.create_task(conn.get(REQUEST.replace(b"ms=0", b"ms=500")))
    await asyncio.sleep(0.1)
    server.terminate()
    status = await answer
    answered = time.perf_counter()
    exited = await server.exited()
    conn.close()
    assert status == 200, status
    return {"after_last_answer_ms": (exited - answered) * 1000}


async def idle_timeline(server: Server) -> dict[str, float]:
    wall = time.time()
    t0 = server.terminate()
    exited = await server.exited()
    assert server.proc is not None
    assert server.proc.returncode == 0, (server.kind, server.proc.returncode)
    return {**server.timeline(wall), "exit": (exited - t0) * 1000}


async def keepalive_timeline(server: Server) -> dict[str, float]:
    conns = [await Conn.open(server.port) for _ in range(100)]
    for conn in conns:
        await conn.get(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await asyncio.sleep(0.2)  # idle means idle
    eofs = [asyncio.create_task(conn.eof()) for conn in conns]
    wall = time.time()
    t0 = server.terminate()
    first_fin = await next(asyncio.as_completed(eofs))
    closed = await asyncio.gather(*eofs)
    exited = await server.exited()
    for conn in conns:
        conn.close()
    assert server.proc is not None
    assert server.proc.returncode == 0, (server.kind, server.proc.returncode)
    return {
        **server.timeline(wall),
        "first FIN": (first_fin - t0) * 1000,
        "last FIN": (max(closed) - t0) * 1000,
        "exit": (exited - t0) * 1000,
    }


async def timelines(tmp: Path, rounds: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Each scenario's moments, per way of serving and ending, rounds alternating."""
    quiet = {"GRACEFUL_LOG_FORMAT": "json", "GRACEFUL_LOG_LEVEL": "info"}
    scenarios = {"idle": idle_timeline, "100 idle keep-alive": keepalive_timeline}
    found: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {kind: {} for kind in TIMELINE} for name in scenarios
    }
    for _ in range(rounds):
        for name, scenario in scenarios.items():
            for kind, argv in TIMELINE.items():
                if kind == "floor" and name != "idle":
                    continue
                server = Server(kind, tmp, quiet, argv)
                await server.start()
                try:
                    got = await scenario(server)
                finally:
                    await server.kill()
                for key, value in got.items():
                    found[name][kind].setdefault(key, []).append(value)
    return found


def timeline_lines(found: dict[str, dict[str, dict[str, list[float]]]], rounds: int) -> list[str]:
    kinds = [k for k in TIMELINE if k != "floor"]
    rows = [
        "signal.received",
        "shutdown.started",
        *[f"phase {p}" for p in PHASES],
        "first FIN",
        "last FIN",
        "shutdown.report",
        "exit",
    ]
    lines = [
        "## Where the milliseconds of a stop go",
        "",
        (
            f"`graceful serve` of a one-route app, one process, {rounds} rounds alternating "
            "(median ms from the SIGTERM to each moment: graceful's own log lines, stamped "
            "as they are written, the client's FINs, the exit as the parent sees it). "
            "*sys.exit*: `python -m graceful serve` as it ends today; *end_process*: the same "
            "command ended by `graceful.runner.end_process` (atexit handlers, thread joins and "
            "flushes, then `os._exit`, without the interpreter's module teardown)."
        ),
        "",
    ]
    floor = found["idle"]["floor"].get("exit")
    for name, by_kind in found.items():
        lines += [f"### {name}", "", "| moment | " + " | ".join(kinds) + " |"]
        lines.append("|---|" + "---:|" * len(kinds))
        for row in rows:
            values = [by_kind[k].get(row) for k in kinds]
            if not any(values):
                continue
            cells = [f"{statistics.median(v):.1f}" if v else "-" for v in values]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    idle = found["idle"]

    def med(kind: str, key: str) -> float:
        values = idle[kind].get(key)
        return statistics.median(values) if values else float("nan")

    for server in ("uvicorn", "aiohttp"):
        now, end = f"{server}, sys.exit", f"{server}, end_process"
        lines.append(
            f"- {server}, idle: the stop itself (SIGTERM → `shutdown.report`) "
            f"{med(now, 'shutdown.report'):.1f} ms; from the report to the exit "
            f"{med(now, 'exit') - med(now, 'shutdown.report'):.1f} ms with `sys.exit`, "
            f"{med(end, 'exit') - med(end, 'shutdown.report'):.1f} ms with `end_process`: "
            f"exit **{med(now, 'exit'):.1f} → {med(end, 'exit'):.1f} ms**."
        )
    lines += [
        "",
        (
            "After the report both ways close the loop, restore the signal handlers, join the "
            "threads that are not daemons and run the `atexit` handlers (a fraction of a "
            "millisecond); what `end_process` leaves out is the interpreter's teardown: every "
            "module emptied one by one and its objects freed, the last collections, and the C "
            "libraries' destructors (uvloop's thread pool is joined), then the kernel frees the "
            "process. Before the report, an idle stop is the signal's delivery and the loop's "
            "wake-up, then one log line per phase (each phase of an idle stop takes "
            "microseconds). With 100 idle keep-alive connections the drain closes them all "
            "in one pass once the listener is closed (the FINs leave at the next iteration of "
            "the loop, when uvloop closes the sockets), then uvicorn and aiohttp run their own "
            "`connection_lost` per connection; the last FIN is what this load client, sharing "
            "the two CPUs, sees of it."
        ),
        "",
    ]
    if floor:
        lines += [
            (
                "A Python process that calls `os._exit` in its SIGTERM handler exits "
                f"{statistics.median(floor):.1f} ms after the signal here: the floor of the "
                "signal's delivery, the process's end and the parent's wake-up."
            ),
            "",
        ]
    return lines


async def load(server: Server, seconds: float) -> tuple[int, float]:
    """``GET /work?ms=0`` on 32 keep-alive connections for ``seconds``: requests, elapsed."""
    conns = [await Conn.open(server.port) for _ in range(32)]
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(conn: Conn) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await conn.get()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return done, elapsed


async def throughput(server: Server, seconds: float) -> dict[str, float]:
    done, elapsed = await load(server, seconds)
    server.terminate()
    await server.exited()
    return {"requests_per_s": done / elapsed}


async def measure(
    kind: str,
    tmp: Path,
    scenario: Callable[[Server], Awaitable[dict[str, float]]],
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    server = Server(kind, tmp, env)
    await server.start()
    try:
        return await scenario(server)
    finally:
        await server.kill()


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if unit == "req/s" else f"{value:.1f} {unit}"


async def main_async(rounds: int, seconds: float) -> str:
    results: dict[str, dict[str, list[float]]] = {k: {} for k in SERVERS}
    scenarios: list[Callable[[Server], Awaitable[dict[str, float]]]] = [
        idle_stop,
        keepalive_stop,
        inflight_stop,
    ]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        found = await timelines(tmp, rounds)
        for _ in range(rounds):
            # Interleaved, so drift of the machine hits every server alike.
            for scenario in scenarios:
                for kind in SERVERS:
                    for key, value in (await measure(kind, tmp, scenario)).items():
                        results[kind].setdefault(key, []).append(value)
        for _ in range(2):
            for kind in SERVERS:
                # No access lines on any server (the peers run with access_log=False): at
                # level warning graceful drops its INFO access lines before rendering them.
                quiet = {"GRACEFUL_LOG_LEVEL": "warning"}
                got = await measure(kind, tmp, lambda s: throughput(s, seconds), quiet)
                if kind.startswith("graceful+"):  # and as shipped: an access line per request
                    logged = await measure(kind, tmp, lambda s: throughput(s, seconds))
                    got["requests_per_s_logged"] = logged["requests_per_s"]
                for key, value in got.items():
                    results[kind].setdefault(key, []).append(value)

    def med(kind: str, key: str) -> float | None:
        values = results[kind].get(key)
        return statistics.median(values) if values else None

    rows = [
        ("idle: SIGTERM → exit", "idle_exit_ms", "ms"),
        ("idle: stop phases (shutdown.report)", "report_ms", "ms"),
        ("100 idle keep-alive: SIGTERM → all closed", "keepalive_closed_ms", "ms"),
        ("100 idle keep-alive: SIGTERM → exit", "keepalive_exit_ms", "ms"),
        ("500 ms in flight: exit - last answer", "after_last_answer_ms", "ms"),
        ("throughput, GET /work?ms=0, 32 conns, no access log", "requests_per_s", "req/s"),
        ("the same with graceful's JSON access line per request", "requests_per_s_logged", "req/s"),
    ]
    lines = [
        "# Drain benchmark",
        "",
        (
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {rounds} rounds (median), "
            f"throughput {seconds:.0f} s, twice. Peers stop with their own graceful timeout at 5 s."
        ),
        "",
        "| figure | " + " | ".join(SERVERS) + " |",
        "|---|" + "---|" * len(SERVERS),
    ]
    for title, key, unit in rows:
        lines.append(f"| {title} | " + " | ".join(fmt(med(k, key), unit) for k in SERVERS) + " |")
    ratios = []
    for ours, peer in (("graceful+uvicorn", "uvicorn"), ("graceful+aiohttp", "aiohttp")):
        a, b = med(ours, "requests_per_s"), med(peer, "requests_per_s")
        if a and b:
            ratios.append(f"- throughput {ours} / {peer}: **{a / b:.3f}**")
    for ours in ("graceful+uvicorn", "graceful+aiohttp"):
        a, b = med(ours, "requests_per_s_logged"), med(ours, "requests_per_s")
        if a and b:
            ratios.append(f"- {ours} with its access log / without: **{a / b:.3f}**")
    lines += ["", "Ratios (tracking middleware and graceful runtime over the plain server):", ""]
    lines += ratios
    lines += [
        "",
        "Exit times include the interpreter's own finalization after the stop is done, which",
        "the shutdown.report row excludes; graceful.run freezes the garbage collector first, so",
        "that teardown no longer walks every object (it took 100-200 ms before).",
        "",
        "The load client shares the machine's CPUs with the server, so throughput is a",
        "relative figure: compare columns, not absolute numbers.",
        "",
    ]
    lines += timeline_lines(found, rounds)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--launch"]:
        launch(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--peer", nargs=3, metavar=("KIND", "PORT", "STATE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.peer:
        kind, port, state = args.peer
        run_peer(kind, int(port), state)
        return 0
    try:
        import uvloop

        report = uvloop.run(main_async(args.rounds, args.seconds))
    except ImportError:
        report = asyncio.run(main_async(args.rounds, args.seconds))
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

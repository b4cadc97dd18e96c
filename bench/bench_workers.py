"""Benchmark: four worker processes behind one port, stopped, beside the peers that do it too.

Run: ``python bench/bench_workers.py [--rounds 3] [--workers 4]``. Prints a markdown report and
writes it to ``bench/results/workers.md``. Not a test: numbers depend on the machine.

Servers, each a child process serving the plain ASGI app below on 127.0.0.1 with N workers,
each with its graceful timeout at 5 s:

- ``graceful serve --workers N`` (``GRACEFUL_STOP_TIMEOUT=5``);
- ``uvicorn --workers N --timeout-graceful-shutdown 5``;
- ``gunicorn -k uvicorn_worker.UvicornWorker -w N --graceful-timeout 5``.

Figures (median of the rounds, counts summed):

1. idle: SIGTERM to the main process's exit, and its exit code;
2. 100 requests of 1 s in flight across the workers at SIGTERM: answered, and the exit after
   the last answer;
3. a burst of connections around SIGTERM (six clients connecting back to back from 0.3 s
   before the signal until the server has exited): answered, refused, and reset, that is
   connections the kernel accepted that nobody answered;
4. memory: RSS of the main process and its workers, idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_drain  # beside this file: a script's directory is on sys.path, and --app-dir too

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "workers.md"
SERVERS = ["graceful serve", "uvicorn", "gunicorn+uvicorn-worker"]
GUARD = 30.0  # seconds: hang guard for any single wait
TIMEOUT = 5  # each server's graceful timeout

Scope = dict[str, Any]


# -- the app (imported by every worker as ``bench_workers:app``) ------------------------------


async def app(scope: Scope, receive: Callable[[], Awaitable[Scope]], send: Any) -> None:
    """``/work?ms=N`` sleeps N ms; ``/pid`` answers the worker's pid."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    query = scope.get("query_string", b"").decode()
    if scope["path"] == "/pid":
        body = str(os.getpid()).encode()
    else:
        ms = int(query.partition("ms=")[2] or 0)
        await asyncio.sleep(ms / 1000)
        body = b"done"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the servers ------------------------------------------------------------------------------


def command(kind: str, port: int, workers: int) -> list[str]:
    where = ["--host", "127.0.0.1", "--port", str(port), "--app-dir", str(ROOT / "bench")]
    n = str(workers)
    if kind == "graceful serve":
        return [sys.executable, "-m", "graceful", "serve", "bench_workers:app", "--workers", n,
                "--no-access-log", *where]  # fmt: skip
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "bench_workers:app", "--workers", n,
                "--timeout-graceful-shutdown", str(TIMEOUT), "--no-access-log",
                "--log-level", "warning", *where]  # fmt: skip
    return [sys.executable, "-m", "gunicorn", "bench_workers:app", "-k",
            "uvicorn_worker.UvicornWorker", "-w", n, "--graceful-timeout", str(TIMEOUT),
            "--bind", f"127.0.0.1:{port}", "--chdir", str(ROOT / "bench"),
            "--log-level", "warning"]  # fmt: skip


class Server(bench_drain.Server):
    """A server with N workers (``bench_drain.Server``'s signals and waits)."""

    def __init__(self, kind: str, workers: int, log: Path) -> None:
        super().__init__(kind, log.parent)
        self.workers = workers
        self.log = log

    async def start(self) -> None:
        env = {**os.environ, "GRACEFUL_STOP_TIMEOUT": str(TIMEOUT), "GRACEFUL_LOG_FORMAT": "json"}
        for name in ("ADMIN_PORT", "WEB_CONCURRENCY", "PORT", "HOST"):
            env.pop(name, None)
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *command(self.kind, self.port, self.workers), env=env, stdout=out, stderr=out
            )
        # Ready once every worker has answered: each connection goes to one of them.
        seen: set[bytes] = set()
        async with asyncio.timeout(GUARD):
            while len(seen) < self.workers:
                try:
                    status, body = await request(self.port, "/pid")
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                if status == 200:
                    seen.add(body)

    async def exited_with(self) -> tuple[float, int]:
        """When the main process exited, and its exit code."""
        exited = await self.exited()
        assert self.proc is not None
        assert self.proc.returncode is not None
        return exited, self.proc.returncode

    def rss_mb(self) -> float:
        """RSS of the main process and its descendants."""
        assert self.proc is not None
        pids = [self.proc.pid]
        total = 0
        while pids:
            pid = pids.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            pids += [int(child) for child in children]
        return total / 1024


async def request(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a new connection (``Connection: close``): status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else 0), body


async def outcome(port: int) -> str:
    try:
        status, _ = await request(port, "/work?ms=0")
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "reset"
    return "answered" if status == 200 else "reset"


# -- scenarios --------------------------------------------------------------------------------


async def idle(server: Server) -> dict[str, float]:
    rss = server.rss_mb()
    t0 = server.terminate()
    exited, code = await server.exited_with()
    return {"idle_exit_ms": (exited - t0) * 1000, "idle_exit_code": code, "rss_mb": rss}


async def inflight(server: Server) -> dict[str, float]:
    async def one() -> tuple[str, float]:
        try:
            status, _ = await request(server.port, "/work?ms=1000")
        except OSError:
            return "reset", time.perf_counter()
        return ("answered" if status == 200 else "reset"), time.perf_counter()

    tasks = [asyncio.create_task(one()) for _ in range(100)]
    await asyncio.sleep(0.3)  # all sent and in flight
    server.terminate()
    results = await asyncio.gather(*tasks)
    exited = await server.exited()
    counts = Counter(kind for kind, _ in results)
    last = max(at for _, at in results)
    return {
        "inflight_answered": counts["answered"],
        "inflight_reset": counts["reset"],
        "after_last_answer_ms": (exited - last) * 1000,
    }


async def burst(server: Server) -> dict[str, float]:
    counts: Counter[str] = Counter()
    done = asyncio.Event()

    async def client() -> None:
        while not done.is_set():
            result = await outcome(server.port)
            counts[result] += 1
            if result == "refused":
                await asyncio.sleep(0.01)  # bounded load once the port is closed

    clients = [asyncio.create_task(client()) for _ in range(6)]
    await asyncio.sleep(0.3)
    server.terminate()
    await server.exited()
    done.set()
    await asyncio.gather(*clients)
    return {f"burst_{k}": counts[k] for k in ("answered", "refused", "reset")}


async def measure(
    kind: str, workers: int, log: Path, scenario: Callable[[Server], Awaitable[dict[str, float]]]
) -> dict[str, float]:
    server = Server(kind, workers, log)
    await server.start()
    try:
        return await scenario(server)
    finally:
        await server.kill()


async def main_async(rounds: int, workers: int, log: Path) -> str:
    results: dict[str, dict[str, list[float]]] = {k: {} for k in SERVERS}
    for _ in range(rounds):
        for scenario in (idle, inflight, burst):  # interleaved: drift hits every server alike
            for kind in SERVERS:
                for key, value in (await measure(kind, workers, log, scenario)).items():
                    results[kind].setdefault(key, []).append(value)

    def cell(kind: str, key: str, how: str) -> str:
        values = results[kind].get(key, [])
        if not values:
            return "-"
        if how == "sum":
            return f"{sum(values):.0f}"
        if how == "codes":
            return ", ".join(str(int(v)) for v in sorted(set(values)))
        unit = " MB" if key == "rss_mb" else " ms"
        return f"{statistics.median(values):.0f}{unit}"

    rows = [
        ("idle: SIGTERM → exit", "idle_exit_ms", "median"),
        ("idle: exit code", "idle_exit_code", "codes"),
        ("100 x 1 s in flight: answered", "inflight_answered", "sum"),
        ("100 x 1 s in flight: reset", "inflight_reset", "sum"),
        ("100 x 1 s in flight: exit - last answer", "after_last_answer_ms", "median"),
        ("burst around SIGTERM: answered", "burst_answered", "sum"),
        ("burst around SIGTERM: refused", "burst_refused", "sum"),
        ("burst around SIGTERM: **reset** (accepted, never answered)", "burst_reset", "sum"),
        ("RSS, main process + workers, idle", "rss_mb", "median"),
    ]
    lines = [
        f"# Workers benchmark (N={workers})",
        "",
        (
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {rounds} rounds (medians; "
            f"counts summed over the rounds). Every server stops with a graceful timeout of "
            f"{TIMEOUT} s. Reproduce: `python bench/bench_workers.py --rounds {rounds} "
            f"--workers {workers}`."
        ),
        "",
        "| figure | " + " | ".join(SERVERS) + " |",
        "|---|" + "---|" * len(SERVERS),
    ]
    for title, key, how in rows:
        lines.append(f"| {title} | " + " | ".join(cell(k, key, how) for k in SERVERS) + " |")
    lines += [
        "",
        "A reset in the burst is a client whose connection the kernel accepted into a listen",
        "backlog that was then closed with it still queued: the client saw its connect succeed",
        "and its request fail. graceful's supervisor closes its copy of the listener at the",
        "signal and its workers drain the backlog before closing theirs (see",
        "`graceful/serve/listeners.py`); a refused connection is one the server turned away,",
        "which a client or load balancer retries elsewhere.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_workers.log"
    log.write_bytes(b"")
    report = asyncio.run(main_async(args.rounds, args.workers, log))
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

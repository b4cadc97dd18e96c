"""Benchmark: N worker processes behind one port, stopped, beside the peers that do it too.

Run: ``python bench/bench_workers.py [--rounds 5] [--workers 1,4] [--seconds 5]``. Prints a
markdown report and writes it to ``bench/results/workers.md``. Not a test: numbers depend on
the machine.

Servers, each serving the plain ASGI app below with N workers, each with its graceful timeout
at 5 s, all on the same loop (uvloop) and HTTP parser (h11):

- ``graceful serve --workers N`` (``GRACEFUL_STOP_TIMEOUT=5``), workers forked from a zygote
  (``--worker-start fork``, the default), and with ``--worker-start preload`` (N > 1 only);
- ``uvicorn --workers N --timeout-graceful-shutdown 5``;
- ``gunicorn -k uvicorn_worker.UvicornWorker -w N --graceful-timeout 5``.

Figures, for every N (median of the rounds, counts summed):

1. idle: SIGTERM to the main process's exit, and its exit code;
2. idle, in a container: ``docker stop`` wall time above the engine's floor (a PID 1 that
   ``os._exit``s in its handler), in an image made from the example image plus gunicorn;
3. 100 requests of 1 s in flight across the workers at SIGTERM: answered, reset, and the
   exit after the last answer;
4. a burst of connections around SIGTERM (six clients connecting back to back from 0.3 s
   before the signal until the server has exited): answered, refused, and reset, that is
   connections the kernel accepted that nobody answered;
5. throughput (``GET /work?ms=0`` on 32 keep-alive connections), with the load client pinned
   to the last CPU and the server with ``taskset`` to the others, so the client's own work
   does not steal the server's CPU; the ratio to uvicorn's is the figure to read, and beside
   it the CPU time the server's processes spent per request, which other load on a shared
   machine disturbs far less than requests per second;
6. memory: RSS and PSS summed over the main process and every descendant, idle after one
   request each (PSS is the honest sum: see the report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_docker  # beside this file: a script's directory is on sys.path, and --app-dir too
import bench_drain

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "workers.md"
SERVERS = ["graceful serve", "graceful serve (preload)", "uvicorn", "gunicorn+uvicorn-worker"]
#: Started as ``graceful serve`` is (with one worker ``--worker-start`` changes nothing).
PRELOAD = "graceful serve (preload)"
GUARD = 30.0  # seconds: hang guard for any single wait
TIMEOUT = 5  # each server's graceful timeout
IMAGE = "graceful-bench-workers"
CPUS = sorted(os.sched_getaffinity(0))
CLIENT_CPU = CPUS[-1]
SERVER_CPUS = ",".join(str(cpu) for cpu in CPUS[:-1] or CPUS)

Scope = dict[str, Any]
Scenario = Callable[["Server"], Awaitable[dict[str, float]]]


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


def command(kind: str, workers: int, python: str, host: str, port: int, app_dir: str) -> list[str]:
    """The command line of one server; the image runs it with the image's own log levels."""
    where = ["--host", host, "--port", str(port), "--app-dir", app_dir]
    n = str(workers)
    if kind.startswith("graceful serve"):
        start = "preload" if kind == PRELOAD else "fork"
        return [python, "-m", "graceful", "serve", "bench_workers:app", "--workers", n,
                "--worker-start", start, "--stop-timeout", str(TIMEOUT), "--no-access-log",
                *where]  # fmt: skip
    if kind == "uvicorn":
        return [python, "-m", "uvicorn", "bench_workers:app", "--workers", n,
                "--timeout-graceful-shutdown", str(TIMEOUT), "--no-access-log", *where]  # fmt: skip
    return [python, "-m", "gunicorn", "bench_workers:app", "-k", "uvicorn_worker.UvicornWorker",
            "-w", n, "--graceful-timeout", str(TIMEOUT), "--bind", f"{host}:{port}",
            "--chdir", app_dir, "--log-level", "info"]  # fmt: skip


class Server(bench_drain.Server):
    """A server with N workers (``bench_drain.Server``'s signals and waits)."""

    def __init__(self, kind: str, workers: int, log: Path, cpus: str | None = None) -> None:
        super().__init__(kind, log.parent)
        self.workers = workers
        self.log = log
        self.cpus = cpus
        self.worker_pids: set[int] = set()  # the processes that answered ``/pid``

    async def start(self) -> None:
        env = {**os.environ, "GRACEFUL_LOG_FORMAT": "json"}
        for name in ("ADMIN_PORT", "WEB_CONCURRENCY", "PORT", "HOST", "GRACEFUL_STOP_TIMEOUT"):
            env.pop(name, None)
        argv = command(self.kind, self.workers, sys.executable, "127.0.0.1", self.port,
                       str(ROOT / "bench"))  # fmt: skip
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]  # taskset execs: same pid
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out)
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
        self.worker_pids = {int(body) for body in seen}

    async def exited_with(self) -> tuple[float, int]:
        """When the main process exited, and its exit code."""
        exited = await self.exited()
        assert self.proc is not None
        assert self.proc.returncode is not None
        return exited, self.proc.returncode

    def tree(self) -> list[int]:
        """The main process and its descendants."""
        assert self.proc is not None
        pids, found = [self.proc.pid], []
        while pids:
            pid = pids.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found.append(pid)
            pids += [int(child) for child in children]
        return found

    async def kill(self) -> None:
        """SIGKILL the main process and every descendant: uvicorn's and gunicorn's workers
        outlive a killed parent, and left running they would load the later measurements."""
        if self.proc is not None and self.proc.returncode is None:
            for pid in self.tree():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await super().kill()

    def memory_mb(self) -> dict[str, float]:
        """RSS and PSS of the main process and its descendants, and how many they are.

        RSS counts a page shared by several processes once in each of them, so the sum
        counts it as many times; PSS counts 1/n of it in each of the n that share it, so
        the sum is the memory the processes take together (``/proc/PID/smaps_rollup``).
        """
        assert self.proc is not None
        found = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0.0}
        by_role: dict[str, list[float]] = {"main": [], "worker": [], "other": []}
        for pid in self.tree():
            with contextlib.suppress(OSError):
                sizes = {}
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name in ("Rss", "Pss"):
                        sizes[name] = int(value.split()[0]) / 1024
                found["rss_mb"] += sizes["Rss"]
                found["pss_mb"] += sizes["Pss"]
                found["processes"] += 1
                by_role[self.role(pid)].append(sizes["Pss"])
        # Where the memory goes: the main process, each worker, the others (a zygote).
        found["pss_main_mb"] = sum(by_role["main"])
        found["pss_worker_mb"] = statistics.median(by_role["worker"] or [0.0])
        found["pss_other_mb"] = sum(by_role["other"])
        return found

    def role(self, pid: int) -> str:
        """``worker`` (it answered requests), ``main``, or ``other``."""
        assert self.proc is not None
        if pid in self.worker_pids:
            return "worker"
        return "main" if pid == self.proc.pid else "other"

    def cpu_s(self) -> tuple[float, float]:
        """CPU time (user + system) the main process and its descendants have used: all of
        them, and the workers' alone."""
        ticks = workers = 0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                used = int(fields[11]) + int(fields[12])
                ticks += used
                workers += used if pid in self.worker_pids else 0
        hz = os.sysconf("SC_CLK_TCK")
        return ticks / hz, workers / hz


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
    memory = server.memory_mb()
    t0 = server.terminate()
    exited, code = await server.exited_with()
    return {"idle_exit_ms": (exited - t0) * 1000, "idle_exit_code": code, **memory}


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


async def throughput(server: Server, seconds: float) -> dict[str, float]:
    """Requests per second with this process (the client) pinned to ``CLIENT_CPU``."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    cpu, workers = server.cpu_s()
    try:
        done, elapsed = await bench_drain.load(server, seconds)
        cpu_after, workers_after = server.cpu_s()
    finally:
        os.sched_setaffinity(0, before)
    return {
        "requests_per_s": done / elapsed,
        "cpu_us_per_request": (cpu_after - cpu) / done * 1e6,
        "cpu_us_per_request_workers": (workers_after - workers) / done * 1e6,
    }


async def measure(
    kind: str, workers: int, log: Path, scenario: Scenario, cpus: str | None = None
) -> dict[str, float]:
    server = Server(kind, workers, log, cpus)
    await server.start()
    try:
        return await scenario(server)
    finally:
        await server.kill()


# -- docker stop ------------------------------------------------------------------------------

DOCKERFILE = f"""\
FROM {bench_docker.IMAGE}
USER root
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /tmp/pip \\
    && /tmp/pip/bin/python -m pip --python /opt/venv/bin/python install --no-cache-dir \\
        --no-index --find-links /tmp/wheels gunicorn uvicorn-worker \\
    && /tmp/pip/bin/python -m pip --python /opt/venv/bin/python install --no-cache-dir \\
        --no-index --no-deps --force-reinstall /tmp/wheels/graceful_stop-*.whl \\
    && rm -rf /tmp/pip /tmp/wheels
COPY app/ /app/bench/
USER 10001:10001
"""


def build_image() -> str | None:
    """The example image plus gunicorn, this tree's graceful and this app; None (and why)
    when it cannot be built."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        bench_docker._docker("image", "inspect", bench_docker.IMAGE)
    except subprocess.CalledProcessError:
        return f"no {bench_docker.IMAGE} image (make images)"
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "app").mkdir()
        for name in ("bench_workers.py", "bench_drain.py", "bench_docker.py"):
            shutil.copy(ROOT / "bench" / name, context / "app" / name)
        (context / "Dockerfile").write_text(DOCKERFILE)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:"]
        subprocess.run([*pip, "-d", str(context / "wheels"), "gunicorn", "uvicorn-worker"],
                       check=True, capture_output=True)  # fmt: skip
        # This tree's graceful, over the example image's (which may be older than it).
        wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        subprocess.run([*wheel, "-w", str(context / "wheels"), str(ROOT)],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(["docker", "build", "--quiet", "-t", IMAGE, str(context)],
                       check=True, capture_output=True)  # fmt: skip
    return None


def docker_stop(kind: str, workers: int) -> dict[str, float]:
    """``docker stop`` of an idle container running ``kind`` with ``workers`` workers."""
    argv = command(kind, workers, bench_docker.PY, "0.0.0.0", 8080, "/app/bench")
    ready = "Application startup complete."  # once per worker, from each of the three
    seconds, code = bench_docker.measure(IMAGE, argv, ready, workers)
    return {"docker_stop_ms": seconds * 1000, "docker_stop_code": code}


def docker_floor() -> float:
    seconds, _ = bench_docker.measure(IMAGE, [bench_docker.PY, "-c", bench_docker.FLOOR], "ready")
    return seconds * 1000


# -- the run and the report -------------------------------------------------------------------

Results = dict[int, dict[str, dict[str, list[float]]]]  # workers -> server -> figure -> values


async def run(
    rounds: int, counts: list[int], seconds: float, log: Path, docker: bool = True
) -> tuple[Results, str]:
    results: Results = {n: {k: {} for k in SERVERS} for n in counts}

    def add(n: int, kind: str, got: dict[str, float]) -> None:
        for key, value in got.items():
            results[n][kind].setdefault(key, []).append(value)

    docker_skipped = build_image() if docker else "--no-docker"
    for r in range(rounds):
        # Interleaved, and each round starts with another server: drift of the machine, and
        # whatever the previous measurement left behind, hits every server alike.
        every = SERVERS[r % len(SERVERS) :] + SERVERS[: r % len(SERVERS)]
        for n in counts:
            order = [kind for kind in every if n > 1 or kind != PRELOAD]
            for scenario in (idle, inflight, burst):
                for kind in order:
                    add(n, kind, await measure(kind, n, log, scenario))
            for kind in order:
                pinned = await measure(
                    kind, n, log, lambda s: throughput(s, seconds), cpus=SERVER_CPUS
                )
                add(n, kind, pinned)
            if docker_skipped is None:
                floor = await asyncio.to_thread(docker_floor)
                for kind in order:
                    if kind == PRELOAD:
                        continue  # the image's graceful may predate --worker-start
                    got = await asyncio.to_thread(docker_stop, kind, n)
                    got["docker_above_floor_ms"] = got["docker_stop_ms"] - floor
                    add(n, kind, got)
    return results, docker_skipped or ""


ROWS = [
    ("idle: SIGTERM → exit", "idle_exit_ms", "ms"),
    ("idle: exit code", "idle_exit_code", "codes"),
    ("idle: `docker stop`, above the engine floor", "docker_above_floor_ms", "ms"),
    ("idle: `docker stop` exit code", "docker_stop_code", "codes"),
    ("100 x 1 s in flight: answered", "inflight_answered", "sum"),
    ("100 x 1 s in flight: reset", "inflight_reset", "sum"),
    ("100 x 1 s in flight: exit - last answer", "after_last_answer_ms", "ms"),
    ("burst around SIGTERM: answered", "burst_answered", "sum"),
    ("burst around SIGTERM: refused", "burst_refused", "sum"),
    ("burst around SIGTERM: **reset** (accepted, never answered)", "burst_reset", "sum"),
    ("throughput, client pinned (req/s)", "requests_per_s", "rate"),
    ("throughput ÷ uvicorn's", "requests_per_s", "ratio"),
    ("server CPU per request (µs), all processes", "cpu_us_per_request", "µs"),
    ("uvicorn's CPU per request ÷ this one's", "cpu_us_per_request", "inverse"),
    ("server CPU per request (µs), the workers alone", "cpu_us_per_request_workers", "µs"),
    ("memory: RSS, summed over all processes, idle", "rss_mb", "MB"),
    ("memory: **PSS**, summed over all processes, idle", "pss_mb", "MB"),
    ("processes", "processes", "n"),
    ("PSS of the main process", "pss_main_mb", "MB"),
    ("PSS of each worker (median)", "pss_worker_mb", "MB"),
    ("PSS of the other processes (zygote; multiprocessing's tracker)", "pss_other_mb", "MB"),
]


def against_gunicorn(figures: dict[str, dict[str, list[float]]], n: int) -> list[str]:
    """Where graceful's figures differ from gunicorn's, process by process: the profile of a
    goal (throughput and memory at least gunicorn's) that this run did not reach."""

    def median(kind: str, key: str) -> float:
        values = figures[kind].get(key)
        return statistics.median(values) if values else float("nan")

    peer = "gunicorn+uvicorn-worker"
    lines = []
    for kind in ("graceful serve", PRELOAD):
        pss = median(kind, "pss_mb") - median(peer, "pss_mb")
        main = median(kind, "pss_main_mb") - median(peer, "pss_main_mb")
        worker = median(kind, "pss_worker_mb") - median(peer, "pss_worker_mb")
        other = median(kind, "pss_other_mb") - median(peer, "pss_other_mb")
        rate = median(kind, "requests_per_s") / median(peer, "requests_per_s")
        cpu = median(kind, "cpu_us_per_request") - median(peer, "cpu_us_per_request")
        workers_cpu = median(kind, "cpu_us_per_request_workers") - median(
            peer, "cpu_us_per_request_workers"
        )
        lines.append(
            f"- `{kind}` against gunicorn: PSS {pss:+.0f} MB = main process {main:+.0f}, "
            f"workers {n} x {worker:+.1f}, other processes (the zygote) {other:+.0f}; "
            f"throughput {rate:.3f} of gunicorn's, CPU per request {cpu:+.0f} µs, of which "
            f"the workers' {workers_cpu:+.0f} µs."
        )
    return lines


def report(results: Results, rounds: int, seconds: float, docker_skipped: str) -> str:
    counts = sorted(results)

    def cell(n: int, kind: str, key: str, how: str) -> str:
        values = results[n][kind].get(key, [])
        if not values:
            return "-"
        if how == "sum":
            return f"{sum(values):.0f}"
        if how == "codes":
            return ", ".join(str(int(v)) for v in sorted(set(values)))
        median = statistics.median(values)
        if how == "rate":
            return f"{median:,.0f}"
        if how in ("ratio", "inverse"):
            base = results[n]["uvicorn"].get(key)
            if not base:
                return "-"
            ratio = median / statistics.median(base)
            return f"**{ratio if how == 'ratio' else 1 / ratio:.3f}**"
        if how == "n":
            return f"{median:.0f}"
        return f"{median:.0f} {how}"

    flags = ",".join(map(str, counts))
    lines = [
        "# Workers benchmark",
        "",
        (
            f"One run of `python bench/bench_workers.py --rounds {rounds} --workers {flags} "
            f"--seconds {seconds:g}`: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"{rounds} rounds, N = {flags} interleaved in each round (medians; counts summed "
            f"over the rounds). Every server stops with a graceful timeout of {TIMEOUT} s. "
            f"Throughput: load client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPUS}, "
            f"{seconds:g} s each."
        ),
    ]
    if docker_skipped:
        lines += ["", f"`docker stop` rows skipped: {docker_skipped}."]
    header = "| figure | " + " | ".join(SERVERS) + " |"
    for n in counts:
        lines += ["", f"## {n} worker{'s' if n > 1 else ''}", "", header]
        lines.append("|---|" + "---:|" * len(SERVERS))
        for title, key, how in ROWS:
            cells = " | ".join(cell(n, kind, key, how) for kind in SERVERS)
            lines.append(f"| {title} | {cells} |")
        if n > 1:
            lines += ["", *against_gunicorn(results[n], n)]
    lines += [
        "",
        "A reset in the burst is a client whose connection the kernel accepted into a listen",
        "backlog that was then closed with it still queued: the client saw its connect succeed",
        "and its request fail. graceful's supervisor closes its copy of the listener at the",
        "signal and its workers drain the backlog before closing theirs (see",
        "`graceful/serve/listeners.py`); a refused connection is one the server turned away,",
        "which a client or load balancer retries elsewhere. Fewer answered in the burst means",
        "the server was gone sooner, not that it turned clients away.",
        "",
        "Memory: summed RSS counts a page shared by n processes n times; summed PSS counts it",
        "once (1/n in each), so PSS is the memory the server takes, and the figure to read.",
        "graceful's workers are forked from a zygote, itself forked from the supervisor before",
        "its event loop started, with graceful, uvicorn and its protocols imported (and, with",
        "`--worker-start preload`, the app): most of their pages are shared copy-on-write.",
        "gunicorn's are forked from its arbiter (the app imported in each worker); uvicorn's are",
        "spawned fresh. Throughput and CPU per request are measured with access lines off on",
        "all of them (the access lines of graceful and uvicorn side by side: the access",
        "benchmark).",
        "",
        "Where graceful is behind gunicorn (the lines under each table): in memory, the zygote",
        "is one process more (its PSS is mostly its share of the pages its workers use too;",
        "forking the workers from the supervisor itself would save it, but a replacement would",
        "then be forked from a process whose event loop and threads run), and each process",
        "copies the pages it writes to, reference counts included. In CPU, the supervisor and",
        "the zygote spend nothing per request (the CPU of the workers alone is the total), and",
        "`strace -c` of a worker under this load counts the same system calls per request as",
        "a gunicorn worker's (one read, two writes); no metric is written per request (the",
        "multiprocess gauges once a second). What is left is graceful's ASGI middleware (in",
        "flight count, `Connection: close` once a stop began; about 2 µs a request measured",
        "in-process, a few percent of a worker's py-spy samples: `send_with_close` and",
        "`GracefulMiddleware.__call__`). On this shared 2-core machine two runs differ by more",
        "than that: read the ratios of one run, and the rows of several.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1,4", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker stop rows")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    docker = not args.no_docker
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_workers.log"
    log.write_bytes(b"")
    try:
        import uvloop

        results, skipped = uvloop.run(run(args.rounds, counts, args.seconds, log, docker))
    except ImportError:
        results, skipped = asyncio.run(run(args.rounds, counts, args.seconds, log, docker))
    text = report(results, args.rounds, args.seconds, skipped)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

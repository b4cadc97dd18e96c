"""Acknowledged durable writes per second: group commit against one commit per write.

Each writer is a task that calls ``DurableStore.put`` with a new key, waits for the
acknowledgement (committed and fsynced), and goes again. Both modes run in the same process,
one after the other, on the same disk, for the same time: ``max_batch=4096`` (group commit,
the default) and ``max_batch=1`` (one transaction and one fsync per write).

    python bench/bench_state.py [--seconds 1] [--rounds 5] [--writers 1 16 256] [--dir DIR]
                                [--profile-seconds 3]

Prints a markdown table and writes it to ``bench/results/state.md``, with where the time
goes: each thread's CPU per acknowledged write, and (when py-spy is installed) the top
entries of a py-spy profile of one more group-commit round at the most writers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

import graceful.state.writer as writer_module
from graceful.loops import loop_factory
from graceful.state import DurableStore

RESULTS = Path(__file__).resolve().parent / "results" / "state.md"


@dataclass(frozen=True, slots=True)
class Result:
    writers: int
    max_batch: int
    acked: int
    seconds: float
    commits: int
    loop_cpu: float  # CPU seconds of the event loop's thread during the measurement
    writer_cpu: float  # CPU seconds of the store's writer thread (SQLite's work included)

    @property
    def rate(self) -> float:
        return self.acked / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.acked / self.commits if self.commits else 0.0


async def measure(
    directory: Path, *, writers: int, max_batch: int, seconds: float, round_: int
) -> Result:
    registry = CollectorRegistry()
    path = directory / f"bench-{writers}-{max_batch}-{round_}.db"  # a new file each time
    store = DurableStore(path, registry=registry, max_batch=max_batch)
    await store.open()
    acked = 0
    stop_at = time.perf_counter() + seconds

    async def writer(n: int) -> None:
        nonlocal acked
        i = 0
        while time.perf_counter() < stop_at:
            await store.put(f"w{n}-{i}", {"writer": n, "i": i})
            acked += 1
            i += 1

    writer_clock = thread_clock(f"graceful-state:{path}")
    started = time.perf_counter()
    loop_cpu, writer_cpu = time.thread_time(), writer_clock()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    loop_cpu, writer_cpu = time.thread_time() - loop_cpu, writer_clock() - writer_cpu
    elapsed = time.perf_counter() - started
    commits = int(registry.get_sample_value("graceful_state_commits_total") or 0)
    assert await store.count() == acked
    await store.close()  # each measurement has its own file; the directory goes at the end
    return Result(writers, max_batch, acked, elapsed, commits, loop_cpu, writer_cpu)


def thread_clock(name: str) -> Callable[[], float]:
    """The CPU clock of the thread called ``name`` (NaN where the platform has none)."""
    for thread in threading.enumerate():
        if thread.name == name and thread.ident is not None:
            try:
                clock = time.pthread_getcpuclockid(thread.ident)
            except (AttributeError, OSError):
                break
            return lambda: time.clock_gettime(clock)
    return lambda: float("nan")


def filesystem(directory: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "--output=source,fstype", str(directory)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return " ".join(out.split())


def table(results: list[tuple[Result, Result]]) -> str:
    lines = [
        (
            "| writers | group commit (acked writes/s) | one commit per write (acked writes/s) "
            "| speed-up | writes per commit (group) |"
        ),
        "|---:|---:|---:|---:|---:|",
    ]
    for group, single in results:
        lines.append(
            f"| {group.writers} | {group.rate:,.0f} | {single.rate:,.0f} "
            f"| {group.rate / single.rate:.1f}x | {group.mean_batch:.1f} |"
        )
    return "\n".join(lines)


async def run(
    directory: Path, writers: list[int], seconds: float, rounds: int
) -> list[tuple[Result, Result]]:
    """Alternate the two modes ``rounds`` times per writer count; keep each mode's median.

    Alternating short rounds spreads a burst of load from other processes (or a slow patch
    of the disk) over both modes instead of one.
    """
    results = []
    for n in writers:
        groups: list[Result] = []
        singles: list[Result] = []
        for i in range(rounds):
            for max_batch, out in ((4096, groups), (1, singles)):
                out.append(
                    await measure(
                        directory, writers=n, max_batch=max_batch, seconds=seconds, round_=i
                    )
                )
        results.append((median(groups), median(singles)))
    return results


def median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def cpu_table(results: list[tuple[Result, Result]]) -> str:
    """Per acknowledged write: wall time, each thread's CPU, and what is left (waiting)."""
    lines = [
        "| writers | mode | wall per write | event loop CPU | writer thread CPU | neither |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for pair in results:
        for r, mode in zip(pair, ("group commit", "one commit per write"), strict=True):
            wall, loop, writer = (1e6 * x / r.acked for x in (r.seconds, r.loop_cpu, r.writer_cpu))
            lines.append(
                f"| {r.writers} | {mode} | {wall:.1f} µs | {loop:.1f} µs | {writer:.1f} µs "
                f"| {max(wall - loop - writer, 0):.1f} µs |"
            )
    return "\n".join(lines)


# -- the profile --------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile(directory: Path, writers: int, seconds: float) -> tuple[Result, str] | str:
    """One more group-commit round with py-spy sampling this process (every thread, idle
    time left out): the result and py-spy's raw output, or why there is no profile."""
    py_spy = find_py_spy()
    if py_spy is None:
        return "py-spy is not installed (`pip install py-spy`)"
    out = directory / "profile.txt"
    proc = await asyncio.create_subprocess_exec(
        *(py_spy, "record", "--pid", str(os.getpid()), "--rate", "250", "--threads"),
        *("--nonblocking", "--format", "raw", "--output", str(out)),
        *("--duration", str(max(1, round(seconds + 2)))),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(1.0)  # py-spy attaches
    result = await measure(directory, writers=writers, max_batch=4096, seconds=seconds, round_=-1)
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        return f"py-spy failed: {lines[-1]}"
    return result, out.read_text()


def profile_report(raw: str, *, top: int = 12) -> str:
    """The profile's top entries by own samples, and the samples of each thread by kind."""
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    kinds: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or len(frames) < 2:
            continue
        n = int(count)
        thread = thread_role(frames[0])
        if thread not in ("event loop", "writer"):
            continue  # the readers and the bench's helper threads wait (no reads, no work)
        total += n
        own[(thread, short(frames[-1]))] += n
        kinds[(thread, kind(frames))] += n
    if not total:
        return "The profile holds no samples."
    lines = [
        "| thread | what | share of samples |",
        "|---|---|---:|",
        *(f"| {t} | {k} | {100 * n / total:.1f}% |" for (t, k), n in kinds.most_common()),
        "",
        "Top entries by own samples (the function running, not its callers):",
        "",
        "| thread | function (file:line) | share of samples |",
        "|---|---|---:|",
        *(f"| {t} | `{f}` | {100 * n / total:.1f}% |" for (t, f), n in own.most_common(top)),
    ]
    return "\n".join(lines)


def thread_role(label: str) -> str:
    if "graceful-state:" in label:
        return "writer"
    return "event loop" if "MainThread" in label else "other"


def short(frame: str) -> str:
    """``fn (/long/path/graceful/state/x.py:12)`` -> ``fn (graceful/state/x.py:12)``."""
    name, _, where = frame.partition(" (")
    for root in ("/graceful/", "/bench/", "/site-packages/", "/python3."):
        if root in where:
            where = where[where.index(root) + 1 :]
            break
    return f"{name} ({where}" if where else name


def frame_of(fn: Callable[..., object], text: str) -> str:
    """How py-spy names the line of ``fn`` (in graceful/state/writer.py) that holds ``text``."""
    lines, first = inspect.getsourcelines(fn)
    line = next(first + i for i, source in enumerate(lines) if text in source)
    return f"{fn.__qualname__} (graceful/state/writer.py:{line})"


# The writer thread inside SQLite (the INSERT, the commit, its fsync: the GIL released), and
# waiting for the next write (the GIL released: the event loop is making the next batch).
EXECUTE = frame_of(writer_module._insert_chunk, "conn.execute(")
WAITING = frame_of(writer_module.Writer._serve, "self._queue.get()")


def kind(frames: list[str]) -> str:
    """What a sample was doing, from its innermost frame of the store or the bench."""
    leaf = short(frames[-1])
    if leaf == EXECUTE:
        return "SQLite: the INSERT, its commit and fsync (GIL released)"
    if leaf == WAITING:
        return "waiting for the next writes (the event loop is making them)"
    if "_identity" in leaf:
        return "the check that the file is still the one opened (stat)"
    for frame in reversed(frames[1:]):
        if "graceful/state/values.py" in frame or "json/" in frame:
            return "checking and encoding the values (put)"
        if "graceful/state/jobs.py" in frame:
            return "acknowledging: resolving the futures of a batch"
        if "graceful/state/writer.py" in frame or "graceful/state/store.py" in frame:
            return "queueing, batching and the store's own Python"
        if "prometheus_client" in frame:
            return "metrics"
        if "measure.<locals>.writer" in frame:
            return "the benchmark's writers (keys, values, counting)"
    return "the event loop itself (task steps, wake-ups)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per mode (median)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=3.0,
        help="length of the profiled group-commit round (0: no profile)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or min(args.writers) < 1 or args.profile_seconds < 0:
        parser.error("--seconds must be positive, --rounds and --writers at least 1, "
                     "--profile-seconds not negative")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-state-", dir=args.dir) as tmp:
        directory = Path(tmp)
        runner = asyncio.Runner(loop_factory=loop_factory("auto"))
        with runner:
            results = runner.run(run(directory, args.writers, args.seconds, args.rounds))
            profiled = (
                runner.run(profile(directory, max(args.writers), args.profile_seconds))
                if args.profile_seconds
                else "not asked for (`--profile-seconds 0`)"
            )
        fs = filesystem(directory)
        load = os.getloadavg()[0]
    body = table(results)
    print(body)
    body += "\n\n" + where_the_time_goes(results, profiled)
    header = (
        "# Durable writes: group commit vs one commit per write\n\n"
        f"`python bench/bench_state.py --seconds {args.seconds:g} --rounds {args.rounds}` "
        f"on {platform.node()}: "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs (load average {load:.1f} at the end), database on `{fs}`, "
        f"{time.strftime('%Y-%m-%d')}.\n\n"
        "An acknowledged write is a `DurableStore.put` that returned: committed in WAL mode "
        "with `synchronous=FULL` (fsynced). Each writer is a task that writes one key, waits "
        "for the acknowledgement and writes the next. Both modes ran in the same process, "
        f"alternating, {args.rounds} rounds of {args.seconds:g} s each; the table shows each "
        "mode's median round.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + body + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def summary(r: Result) -> str:
    """Where one group-committed write's time went, in a sentence."""
    wall, loop, writer = (1e6 * x / r.acked for x in (r.seconds, r.loop_cpu, r.writer_cpu))
    return (
        f"At {r.writers} writers a group-committed write took {wall:.1f} µs: {loop:.1f} µs "
        f"of the event loop's CPU, {writer:.1f} µs of the writer thread's (SQLite's part "
        "mostly: writing the pages each new key dirties to the log), and "
        f"{max(wall - loop - writer, 0):.1f} µs in neither thread, mostly waiting on the "
        f"fsync of each of the {r.commits / r.seconds:,.0f} commits a second. As long as a "
        "batch takes every writer, the event loop waits while the batch commits and the "
        "writer thread waits while the loop makes the next one: the three parts add up."
    )


def where_the_time_goes(
    results: list[tuple[Result, Result]], profiled: tuple[Result, str] | str
) -> str:
    parts = [
        "## Where the time goes\n",
        (
            "Per acknowledged write, in the median rounds above: the wall time, the CPU time of "
            "the event loop's thread (the writers, `put`, resolving the acknowledgements) and of "
            "the store's writer thread (batching, the INSERT and SQLite's own work, its writes to "
            "the log included), and what is left: time neither thread ran, mostly waiting for "
            "fsync. The two threads share the GIL, except while SQLite works.\n"
        ),
        cpu_table(results),
        "",
        summary(max(results, key=lambda pair: pair[0].writers)[0]),
        "",
    ]
    if isinstance(profiled, str):
        parts.append(f"No profile: {profiled}.")
        return "\n".join(parts)
    result, raw = profiled
    parts += [
        (
            f"A py-spy profile (`py-spy record --threads --nonblocking`, 250 samples a second, "
            f"idle time left out) of one more group-commit round of {result.seconds:.1f} s at "
            f"{result.writers} writers ({result.rate:,.0f} acknowledged writes/s, "
            f"{result.mean_batch:.0f} writes per commit while profiled); shares of the samples of "
            "the event loop's thread and the writer thread:\n"
        ),
        profile_report(raw),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())

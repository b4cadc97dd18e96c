"""Acknowledged durable writes per second: group commit against one commit per write.

Each writer is a task that calls ``DurableStore.put`` with a new key, waits for the
acknowledgement (committed and fsynced), and goes again. Both modes run in the same process,
one after the other, on the same disk, for the same time: ``max_batch=4096`` (group commit,
the default) and ``max_batch=1`` (one transaction and one fsync per write).

    python bench/bench_state.py [--seconds 1] [--rounds 5] [--writers 1 16 256] [--dir DIR]

Prints a markdown table and writes it to ``bench/results/state.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

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

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    elapsed = time.perf_counter() - started
    commits = int(registry.get_sample_value("graceful_state_commits_total") or 0)
    assert await store.count() == acked
    await store.close()  # each measurement has its own file; the directory goes at the end
    return Result(writers, max_batch, acked, elapsed, commits)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per mode (median)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-state-", dir=args.dir) as tmp:
        directory = Path(tmp)
        runner = asyncio.Runner(loop_factory=loop_factory("auto"))
        with runner:
            results = runner.run(run(directory, args.writers, args.seconds, args.rounds))
        fs = filesystem(directory)
        load = os.getloadavg()[0]
    body = table(results)
    print(body)
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


if __name__ == "__main__":
    raise SystemExit(main())

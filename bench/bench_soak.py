"""`make soak`: `graceful harness soak` on each example image, the tables into BENCHMARKS.md.

Each image runs ``--rounds N`` (100 by default) with every fault type (``power-loss`` where
FUSE and root are available), one ledger across every restart. The JSON reports go to
``build/soak-<image>.json``; ``bench/results/soak.md`` gets one table per image, with the seed
that replays it, and BENCHMARKS.md is rebuilt (``bench/run.py --collect-only``). Exits 1 when
a soak failed (its table is still written: a failure is a figure too). Needs the images of
``docker/build.sh``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
IMAGES = ["graceful-example-asgi", "graceful-example-aiohttp"]
COLUMNS = (
    "| fault | rounds | requests sent | failed | cut by a kill | writes acked | lost | "
    "exit codes | slowest stop |\n|---|---:|---:|---:|---:|---:|---:|---|---:|"
)


def _row(name: str, s: dict[str, Any]) -> str:
    exits = ", ".join(f"{c} x{n}" for c, n in sorted(s["exit_codes"].items()))
    slowest = s["slowest_stop_seconds"]
    stop = "-" if slowest is None else f"{slowest:.2f} s"
    return (
        f"| {name} | {s['rounds']} | {s['sent']:,} | {s['failed']} | {s['cut']} | "
        f"{s['acked']:,} | {s['lost']} | {exits} | {stop} |"
    )


def _table(report: dict[str, Any], minutes: float) -> str:
    by_fault: dict[str, dict[str, Any]] = report["by_fault"]
    totals = report["totals"]
    codes: dict[str, int] = {}
    for summary in by_fault.values():
        for code, n in summary["exit_codes"].items():
            codes[code] = codes.get(code, 0) + n
    stops = [s["slowest_stop_seconds"] for s in by_fault.values() if s["slowest_stop_seconds"]]
    total = {**totals, "exit_codes": codes, "slowest_stop_seconds": max(stops, default=None)}
    replay = (
        f"graceful harness soak --image {report['image']} --seed {report['seed']} "
        f"--rounds {totals['rounds']} --faults {','.join(report['faults'])}"
    )
    lines = [
        f"### {report['image']}: {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"{totals['rounds']} rounds in {minutes:.1f} min, seed {report['seed']}: `{replay}`.",
        "",
        COLUMNS,
        *(_row(f"`{name}`", s) for name, s in by_fault.items()),
        _row("**total**", total),
    ]
    failed = [r for r in report["rounds"] if r["problems"]]
    if failed:
        lines += ["", "Failed rounds:", ""]
        lines += [
            f"- round {r['round']} ({r['fault']}): {'; '.join(r['problems'])}" for r in failed
        ]
    if report["notes"]:
        lines += ["", *(f"Note: {n}" for n in report["notes"])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--images", nargs="+", default=IMAGES)
    args = parser.parse_args()
    sections = []
    failed = False
    for image in args.images:
        path = ROOT / "build" / f"soak-{image}.json"
        path.unlink(missing_ok=True)  # never report an older soak's figures
        print(f"== soak {image}, {args.rounds} rounds", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "graceful.harness", "soak", "--image", image,
             "--rounds", str(args.rounds), "--json", str(path)],
            check=False,
        )  # fmt: skip
        minutes = (time.monotonic() - started) / 60
        if not path.exists():
            print(f"soak of {image} wrote no report (exit {proc.returncode})", file=sys.stderr)
            return 1
        failed |= proc.returncode != 0
        sections.append(_table(json.loads(path.read_text()), minutes))
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    head = f"""# Soak: faults under load, one ledger

`make soak` (`python bench/bench_soak.py --rounds {args.rounds}`), {time.strftime("%Y-%m-%d")},
Docker engine {engine}, `--stop-timeout 10`: each image under continuous load (4 concurrent
`GET /work?ms=20`, 2 writers, 2 requests of 0.5 s held across each fault) for {args.rounds}
rounds, each ended by a fault drawn from a
seeded sequence that gives every fault type its share, on one state volume (the power-loss
volume, FUSE, when `power-loss` runs), one ledger of acknowledged writes across every restart.
After each fault a new container on the volume must list every write acknowledged so far.
*failed*: a request sent before a stop and not answered 2xx (for the kills: one that failed
before the kill); *cut by a kill*: in flight when a kill ended the container (expected);
*slowest stop*: from the fault (the kill, after a pause) to the exit, client side."""
    (BENCH / "results" / "soak.md").write_text("\n\n".join([head, *sections]) + "\n")
    subprocess.run([sys.executable, str(BENCH / "run.py"), "--collect-only"], check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

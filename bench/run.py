"""``make bench``: run every benchmark side by side and rebuild BENCHMARKS.md from the results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SUITES = [
    "bench_drain.py",
    "bench_state.py",
    "bench_docker.py",
    "bench_workers.py",
    "bench_access.py",
    "bench_aiohttp.py",
]

HEADER = """# Benchmarks

Measured with `make bench` on this project's CI machine kind (2 cores, shared and noisy):
each table compares figures measured side by side in one run, so read ratios, not absolute
numbers. Every suite writes its own result file under `bench/results/`; this page is rebuilt
from them.
"""


def main() -> int:
    failed = 0
    suites = [] if "--collect-only" in sys.argv else SUITES
    if "--swarm" in sys.argv and "--collect-only" not in sys.argv:
        suites = [*suites, "bench_swarm.py"]  # about half an hour of Swarm updates: opt-in
    for suite in suites:
        print(f"== {suite}", flush=True)
        failed += subprocess.run([sys.executable, str(BENCH / suite)], check=False).returncode != 0
    parts = [HEADER]
    for result in sorted((BENCH / "results").glob("*.md")):
        text = result.read_text().strip()
        parts.append(
            "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        )
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(parts) + "\n")
    print("wrote BENCHMARKS.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

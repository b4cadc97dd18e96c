"""`python bench/bench_swarm.py` (`make bench-swarm`): consecutive Swarm rolls under load, per
balancer profile, for the example beside a plain-uvicorn control.

Each case runs the ``swarm-update`` scenario's measurement (:mod:`graceful.harness.scenarios.
swarm`) with ``--rolls N`` consecutive ``docker service update --force`` of a 3-task service
(alternately stop-first and start-first, parallelism 1) behind HAProxy on ``tasks.<service>``,
8 clients of ``GET /work?ms=20`` (``/slow?s=0`` for the control) through the balancer's
127.0.0.1 port the whole time. ``bench/results/swarm.md`` gets one table per case: each roll's
requests, failed requests (with the balancer's termination states) and each replaced task's
exit code and stop time (engine events: stop signal to exit); BENCHMARKS.md is built from the
result files by ``bench/run.py`` (``--collect-only`` for that alone). The raw figures go to
``build/bench-swarm.json``.

Long (about 25 minutes for the default cases on a 2-core machine): ``bench/run.py`` runs it
only with ``--swarm`` (``make bench-swarm`` runs it alone). Needs ``docker/build.sh``'s images;
the plain-uvicorn control image is built from ``tests/images/plain-uvicorn.Dockerfile`` (as the
tests build it) when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from graceful.harness.context import Context, Settings  # noqa: E402
from graceful.harness.contract import Contract  # noqa: E402
from graceful.harness.engine import Engine, connect  # noqa: E402
from graceful.harness.scenarios.swarm import SwarmUpdate  # noqa: E402
from graceful.harness.swarm_profile import PROFILES  # noqa: E402
from graceful.harness.swarm_report import SwarmOutcome, states_of  # noqa: E402
from graceful.harness.workload import Workload  # noqa: E402

EXAMPLE = "graceful-example-asgi"
PLAIN = "graceful-test-plain-uvicorn:latest"
PLAIN_WORKLOAD = Workload(
    admin_port=None,
    work_url="/slow?s={seconds}",
    ready_path="/health",
    items_path="",
    stream_path="",
    volume_path="",
    report_event="",
)


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    image: str
    profile: str
    delay: float | None = None
    plain: bool = False


CASES = {
    c.key: c
    for c in (
        Case("graceful-default", "graceful example, default profile", EXAMPLE, "default"),
        Case("plain-default", "plain uvicorn (control), default profile", PLAIN, "default",
             plain=True),
        Case("graceful-fast", "graceful example, fast profile", EXAMPLE, "fast"),
        Case("plain-fast", "plain uvicorn (control), fast profile", PLAIN, "fast", plain=True),
        Case("graceful-delay0", "graceful example with GRACEFUL_DELAY=0, default profile",
             EXAMPLE, "default", delay=0.0),
    )
}  # fmt: skip


def plain_image(engine: Engine) -> None:
    """Build the plain-uvicorn control image the way tests/harness_servers.py does."""
    import docker.errors

    try:
        engine.client.images.get(PLAIN)
        return
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(ROOT / "tests" / "images", context)
        shutil.copytree(ROOT / "build" / "wheelhouse", context / "wheelhouse")
        engine.build(
            context,
            tag=PLAIN,
            dockerfile="plain-uvicorn.Dockerfile",
            buildargs={"BASE_IMAGE": "graceful-base:bookworm"},
        )


async def measure(engine: Engine, case: Case, rolls: int) -> SwarmOutcome:
    workload = PLAIN_WORKLOAD if case.plain else Workload()
    settings = Settings(workload=workload)
    scenario = SwarmUpdate(
        rolls=tuple(("stop-first", "start-first")[i % 2] for i in range(rolls)),
        profile=PROFILES[case.profile],
        delay=case.delay,
    )
    ctx = Context(
        engine,
        engine.image(case.image),
        settings,
        scenario=scenario.name,
        progress=lambda text: print(f"  {text}", flush=True),
        contract=Contract.assumed(workload),
    )
    try:
        return await scenario.measure(ctx)
    finally:
        await ctx.close()


def figures(outcome: SwarmOutcome) -> dict[str, Any]:
    rolls = []
    for roll in outcome.rolls:
        counts = roll.ledger.counts()
        rolls.append(
            {
                "kind": roll.kind,
                "state": roll.state,
                "seconds": round(roll.seconds, 1),
                "sent": counts.sent,
                "failed": counts.failed,
                "lb_states": states_of(outcome.lb_logs, [roll]),
                "tasks": [
                    {"exit_code": t.exit_code, "stop_seconds": t.stop_seconds} for t in roll.stopped
                ],
            }
        )
    return {
        "profile": outcome.profile.describe(),
        "needed_delay": outcome.profile.needed_delay(),
        "delay": outcome.delay,
        "stop_timeout": outcome.stop_timeout,
        "left": outcome.left,
        "rolls": rolls,
    }


def table(case: Case, data: dict[str, Any], minutes: float) -> str:
    rolls = data["rolls"]
    sent = sum(r["sent"] for r in rolls)
    failed = sum(r["failed"] for r in rolls)
    stops = [t["stop_seconds"] for r in rolls for t in r["tasks"] if t["stop_seconds"]]
    codes = sorted({str(t["exit_code"]) for r in rolls for t in r["tasks"]})
    delay = "-" if case.plain else f"{data['delay']:g} s"
    lines = [
        f"## {case.title}",
        "",
        f"`{case.image}`, {len(rolls)} consecutive rolls of 3 tasks in {minutes:.1f} min; "
        f"balancer {data['profile']}, which needs GRACEFUL_DELAY >= {data['needed_delay']:g} s; "
        f"GRACEFUL_DELAY {delay}, stop timeout {data['stop_timeout']} s. "
        f"**{failed} of {sent:,} requests failed**; replaced tasks exited "
        f"{'/'.join(codes) or '-'}, in {min(stops, default=0):.1f}-{max(stops, default=0):.1f} s "
        "from the stop signal."
        + (f" Engine not left as found: {'; '.join(data['left'])}." if data["left"] else ""),
        "",
        (
            "| roll | update | requests | failed | balancer | tasks' exit codes "
            "| tasks' stop times (s) |"
        ),
        "|---:|---|---:|---:|---|---|---|",
    ]
    for number, r in enumerate(rolls, 1):
        exits = ", ".join(str(t["exit_code"]) for t in r["tasks"])
        times = ", ".join(
            f"{t['stop_seconds']:.1f}" if t["stop_seconds"] is not None else "?" for t in r["tasks"]
        )
        lines.append(
            f"| {number} | {r['kind']} ({r['state']}, {r['seconds']:.0f} s) | {r['sent']:,} | "
            f"{r['failed']} | {r['lb_states'] or '-'} | {exits} | {times} |"
        )
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """One row per case, side by side."""
    lines = [
        (
            "| case | balancer profile | GRACEFUL_DELAY | requests | failed | replaced tasks' "
            "exit | stop times (s) |"
        ),
        "|---|---|---|---:|---:|---|---|",
    ]
    for key, data in results.items():
        case = CASES[key]
        tasks = [t for r in data["rolls"] for t in r["tasks"]]
        codes = {str(t["exit_code"]) for t in tasks}
        stops = [t["stop_seconds"] for t in tasks if t["stop_seconds"] is not None]
        exits = f"{len(tasks)} x {codes.pop()}" if len(codes) == 1 else ", ".join(sorted(codes))
        delay = "-" if case.plain else f"{data['delay']:g} s"
        sent = sum(r["sent"] for r in data["rolls"])
        failed = sum(r["failed"] for r in data["rolls"])
        lines.append(
            f"| {case.title.split(',')[0]} | {case.profile} | {delay} | {sent:,} | **{failed}** "
            f"| {exits} | {min(stops, default=0):.1f}-{max(stops, default=0):.1f} |"
        )
    return "\n".join(lines)


HEADER = """# Swarm rolling updates (`bench/bench_swarm.py`)

`docker service update --force` of a 3-task Swarm service (`--endpoint-mode dnsrr`,
parallelism 1, alternately stop-first and start-first) behind HAProxy on `tasks.<service>`,
retrying nothing, with 8 clients through the balancer's 127.0.0.1 port the whole time. The
balancer's profile decides how soon it stops routing to a task Swarm is replacing
([docs/swarm.md](docs/swarm.md)); the plain-uvicorn control shows what happens without a
delay phase, measured in the same run. Under a profile that keeps a task's address after it
left DNS (default: `hold obsolete 30s`), a failed request mostly waits 2 s for HAProxy's connect
timeout to a task that is gone (`503 sC--`), which is why those runs send few requests.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rolls", type=int, default=10, help="consecutive rolls per case")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated cases (default: all: {', '.join(CASES)})",
    )
    args = parser.parse_args(argv)
    cases = [CASES[key] for key in args.cases.split(",") if key]
    engine = connect()
    results: dict[str, Any] = {}
    parts = [HEADER]
    try:
        if any(c.plain for c in cases):
            plain_image(engine)
        for case in cases:
            print(f"== {case.key}", flush=True)
            started = time.monotonic()
            outcome = asyncio.run(measure(engine, case, args.rolls))
            data = results[case.key] = figures(outcome)
            parts.append(table(case, data, (time.monotonic() - started) / 60))
            print(parts[-1], flush=True)
            # Written after every case: a long run cut short keeps what it measured.
            out = ROOT / "build" / "bench-swarm.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            document = [parts[0], summary(results), *parts[1:]]
            (BENCH / "results" / "swarm.md").write_text("\n\n".join(document) + "\n")
    finally:
        engine.close()
    print("wrote bench/results/swarm.md (bench/run.py --collect-only puts it in BENCHMARKS.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``graceful harness``: run the scenarios against an image and print the verdict.

::

    graceful harness run --image IMAGE [--scenario NAME ...] [--stop-timeout S] [--json PATH]
                         [--work-url '/slow?s={seconds}'] [--ready-path main:/health]
                         [--stream-path /events] [--admin-port off] [--strict]
                         [--write 'POST /orders {"id": "{id}"}' --read 'GET /orders/{id}']
    graceful harness soak --image IMAGE --rounds N [--seed S] [--faults LIST] [--json PATH]
    graceful harness list
    graceful harness clean [--all]

``run`` and ``soak`` read ``[tool.graceful.harness]`` (:mod:`graceful.harness.settings`) first.

``run`` exits 1 when a scenario FAILs, 0 otherwise; with ``--strict`` also 1 when one was
SKIPPED or INCONCLUSIVE. ``soak`` exits 1 on any lost write or failed accepted request. Both
exit 2 when the harness could not run (no engine, no image, a failed build, a bad option).
The main CLI calls :func:`add_arguments` and :func:`main`; ``python -m graceful.harness`` runs
this module alone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import TYPE_CHECKING, TextIO

from graceful.exceptions import GracefulError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from graceful.harness.container import ImageInfo
    from graceful.harness.context import Settings
    from graceful.harness.engine import Engine
    from graceful.harness.settings import HarnessConfig

__all__ = ["add_arguments", "main"]

_DEFAULT_TAG = "graceful-harness-build:latest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run``, ``soak``, ``list`` and ``clean`` subcommands to ``parser``.

    .. versionadded:: 0.1
    """
    sub = parser.add_subparsers(dest="harness_command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run scenarios against an image; exit 0 only when all pass",
        description="Start the image, stop or kill it under load in each scenario, and judge "
        "what clients saw, the exit code, the logs and the state left behind.",
    )
    run.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="scenario to run (repeatable or comma-separated; every default one when omitted; "
        "opt-in ones (rolling-restart, swarm-update, power-loss) only when named; see `list`)",
    )
    run.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 also when a scenario was SKIPPED or INCONCLUSIVE (not only on FAIL)",
    )
    _image_options(run)
    from graceful.harness.swarm_profile import add_swarm_options

    add_swarm_options(run)
    soak = sub.add_parser(
        "soak",
        help="one image under load through many rounds of faults; exit 0 only when nothing "
        "acknowledged was lost and no accepted request failed",
        description="Run the image under continuous load for N rounds, each ended by a fault "
        "drawn from a seeded sequence (docker stop, a short stop, docker kill, a stop-signal "
        "storm, pause then kill, a power cut where FUSE is available), with one ledger of "
        "acknowledged writes across every restart.",
    )
    soak.add_argument("--rounds", type=int, default=20, help="how many faults (default: 20)")
    soak.add_argument(
        "--seed", type=int, help="seed of the fault sequence (random, and printed, when omitted)"
    )
    soak.add_argument(
        "--faults",
        metavar="LIST",
        help="comma-separated fault types: stop, stop-short, kill, signal-storm, pause-kill, "
        "power-loss (default: all; power-loss only where FUSE and root are available)",
    )
    soak.add_argument("--json", metavar="PATH", help="also write the JSON report here")
    _image_options(soak)
    sub.add_parser("list", help="name the scenarios and what each asserts")
    clean = sub.add_parser(
        "clean",
        help="remove containers, volumes and networks left by harness runs that are over",
        description="Remove what harness runs left behind (a killed run cannot clean up). "
        "Objects of a run still going (its process alive on this machine) are kept.",
    )
    clean.add_argument(
        "--all",
        action="store_true",
        help="also remove objects of runs that are still going, or whose owner cannot be told",
    )


def _image_options(run: argparse.ArgumentParser) -> None:
    """The options that choose the image and describe its contract (``run`` and ``soak``)."""
    from graceful.harness.workload import GRACEFUL_READY_PATH, Workload

    defaults = Workload()
    run.add_argument(
        "--config",
        metavar="PATH",
        help="the pyproject.toml whose [tool.graceful.harness] table describes the app "
        "(default: the nearest one holding that table, from the current directory upwards); "
        "every option below overrides its key (--work-url: work_url)",
    )
    run.add_argument("--image", help="image to test (built with --build when given)")
    run.add_argument(
        "--build",
        metavar="PATH",
        help=f"build the image from this context first (tagged --image, or {_DEFAULT_TAG})",
    )
    run.add_argument("--dockerfile", help="Dockerfile for --build, relative to the context")
    run.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="build argument for --build (repeatable)",
    )
    run.add_argument(
        "--stop-timeout",
        type=int,
        metavar="S",
        help="docker stop -t, also passed as GRACEFUL_STOP_TIMEOUT (default: 10, Docker's)",
    )
    run.add_argument("--port", type=int, help=f"HTTP port in the container ({defaults.port})")
    run.add_argument(
        "--admin-port",
        metavar="PORT|off",
        help=f"admin port (graceful's /readyz) in the container, passed as ADMIN_PORT with "
        f"ADMIN_HOST=0.0.0.0; off for none (default: {defaults.admin_port}; 0, a random port "
        "in graceful's runtime, cannot be published)",
    )
    work = run.add_mutually_exclusive_group()
    work.add_argument(
        "--work-url",
        metavar="TEMPLATE",
        help="GET target of a request that takes a given time, with {ms} or {seconds}: "
        "'/slow?s={seconds}' (default: " + defaults.work_url.replace("%", "%%") + ")",
    )
    work.add_argument(
        "--work-path",
        metavar="PATH",
        help="shorthand for --work-url 'PATH?ms={ms}'",
    )
    run.add_argument(
        "--items-path",
        help="POST/GET durable items; empty turns write checks off (default: /items)",
    )
    run.add_argument(
        "--write",
        metavar="TEMPLATE",
        help='write template, acknowledged on 2xx: \'POST /orders {"id": "{id}"}\' '
        "(with --read, instead of --items-path)",
    )
    run.add_argument(
        "--read",
        metavar="TEMPLATE",
        help="read template: 2xx when the id is stored, 404 when not: 'GET /orders/{id}'",
    )
    run.add_argument(
        "--ready-path",
        metavar="[main:|admin:]PATH",
        help="readiness path (200 when ready): on the admin port when there is one, else on "
        "the main port; prefix main: or admin: to choose; empty for none (a short work "
        f"request then) (default: {GRACEFUL_READY_PATH} on the admin port; none without one)",
    )
    run.add_argument(
        "--stream-path",
        metavar="PATH",
        help="a streaming response (SSE or chunked) that stays open until the stop, for "
        f"stop-during-stream; empty for none (default: {defaults.stream_path})",
    )
    run.add_argument(
        "--volume-path",
        help=f"where the state volume is mounted; empty for none ({defaults.volume_path})",
    )
    run.add_argument(
        "--report-event",
        help="log event summarising a stop (counted: a stop must run once); empty to skip "
        f"({defaults.report_event})",
    )
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service (repeatable)",
    )
    run.add_argument("--startup-timeout", type=float, help="seconds to become ready (60)")
    init = run.add_mutually_exclusive_group()
    init.add_argument(
        "--init", action="store_true", default=None, help="run the service under docker's --init"
    )
    init.add_argument(
        "--no-init", dest="init", action="store_false", default=None, help="turn init = true off"
    )
    run.add_argument("--probe-image", help="image with python3 for the in-network prober")


def main(args: argparse.Namespace) -> int:
    """Run the subcommand chosen in ``args``; returns the process exit code.

    .. versionadded:: 0.1
    """
    command = getattr(args, "harness_command", None)
    if command == "list":
        return _list(sys.stdout)
    if command == "clean":
        return _clean(everything=getattr(args, "all", False))
    if command == "run":
        return _run(args)
    if command == "soak":
        return _soak(args)
    print("graceful harness: choose a command: run, soak, list, clean", file=sys.stderr)
    return 2


def _list(out: TextIO) -> int:
    from graceful.harness.scenarios import SCENARIOS, opt_in_scenarios

    every = {**SCENARIOS, **opt_in_scenarios()}
    width = max(len(n) for n in every)
    for name, cls in every.items():
        print(f"{name.ljust(width)}  {cls.summary}", file=out)
    return 0


def _clean(*, everything: bool) -> int:
    from graceful.harness.engine import EngineUnavailable, clean_up, connect

    try:
        engine = connect()
    except EngineUnavailable as exc:
        print(f"graceful harness: {exc}", file=sys.stderr)
        return 2
    from graceful.harness.swarm_clean import clean_swarm

    try:
        # Swarm services first: their task containers and network go with them.
        swarmed = clean_swarm(engine, everything=everything)
        removed, kept = clean_up(engine.client, everything=everything)
    finally:
        engine.client.close()
    if swarmed:
        print(f"removed {swarmed} Swarm services/networks/swarms left by harness runs")
    print(f"removed {removed} harness containers/volumes/networks")
    if kept:
        print(
            f"kept the objects of {len(kept)} run(s) still going ({', '.join(sorted(kept))}); "
            "--all removes them too"
        )
    return 0


def _config(args: argparse.Namespace) -> HarnessConfig:
    """The options over the pyproject.toml table (:func:`graceful.harness.settings.from_args`)."""
    from graceful.harness.settings import from_args

    return from_args(args)


def _run(args: argparse.Namespace) -> int:
    from graceful.harness.scenarios import default_names
    from graceful.harness.settings import checked_from_args, record_source

    config = checked_from_args(args)
    if config is None:
        return 2
    # Opt-in scenarios (rolling-restart, swarm-update, power-loss) run only when named; the
    # names were checked with the table (an unknown one names its flag or key).
    names: list[str] = []
    for item in config.scenarios or default_names(config.workload):
        names.extend(n.strip() for n in item.split(",") if n.strip())
    from graceful.harness.scenarios import make_scenarios
    from graceful.harness.scenarios.swarm import configure

    try:  # scenario options (--swarm-lb) are checked before the engine is asked anything
        chosen = configure(make_scenarios(names), args)
    except ValueError as exc:
        print(f"graceful harness: {exc}", file=sys.stderr)
        return 2

    async def scenarios(engine: Engine, image: ImageInfo, settings: Settings) -> int:
        from graceful.harness.scenarios import run_scenarios

        scenarios = chosen
        progress.total = len(scenarios)
        report = await run_scenarios(
            engine,
            image,
            scenarios,
            settings,
            progress=progress.update,
            on_result=progress.result,
        )
        progress.clear()
        sys.stdout.write(report.table())
        if args.json:
            report.write_json(args.json)
            print(f"JSON report: {args.json}")
        return report.exit_code(strict=args.strict)

    progress = Progress(sys.stderr)
    code = _with_image(config, progress, scenarios)
    if code in (0, 1):  # a report was written: name the pyproject.toml in it
        record_source(args.json, config)
    return code


def _soak(args: argparse.Namespace) -> int:
    import secrets

    from graceful.harness.settings import checked_from_args, record_source
    from graceful.harness.soak import SoakOptions, choose_faults

    config = checked_from_args(args)
    if config is None:
        return 2
    try:
        faults, left_out = choose_faults(args.faults, volume=bool(config.workload.volume_path))
    except ValueError as exc:
        print(f"graceful harness: --faults: {exc}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("graceful harness: --rounds must be at least 1", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    options = SoakOptions(rounds=args.rounds, seed=seed, faults=faults)
    progress = Progress(sys.stderr)  # its status line names the round

    async def soak(engine: Engine, image: ImageInfo, settings: Settings) -> int:
        from graceful.harness.soak import soak_and_report

        return await soak_and_report(
            engine, image, settings, options, status=progress.update, line=progress.line,
            json_path=args.json, left_out=left_out,
        )  # fmt: skip

    code = _with_image(config, progress, soak)
    if code in (0, 1):
        record_source(args.json, config)
    return code


_ONE_MOMENT = "graceful harness: removing what this run created; one moment"


def _with_image(
    config: HarnessConfig,
    progress: Progress,
    body: Callable[[Engine, ImageInfo, Settings], Awaitable[int]],
) -> int:
    """Connect, get (or build) the image, run ``body``; everything it started is removed
    at the end, also on Ctrl-C (exit 130) and SIGTERM."""
    try:
        return asyncio.run(_with_image_async(config, progress, body))
    except KeyboardInterrupt:
        print("graceful harness: interrupted", file=sys.stderr)
        return 130


async def _with_image_async(
    config: HarnessConfig,
    progress: Progress,
    body: Callable[[Engine, ImageInfo, Settings], Awaitable[int]],
) -> int:
    from graceful.harness.engine import ContainerError, EngineUnavailable, connect

    # SIGTERM to the harness cancels the run like Ctrl-C does, so the finally below removes
    # every container and volume it created (and unmounts a power-loss volume).
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    interrupted = False
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        engine = await asyncio.to_thread(connect)
    except (EngineUnavailable, GracefulError) as exc:
        print(f"graceful harness: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:  # stopped before anything was created
        raise KeyboardInterrupt from None
    try:
        try:
            if config.build:
                tag = config.image or _DEFAULT_TAG
                progress.update(f"building {tag} from {config.build}")
                image = await asyncio.to_thread(
                    engine.build,
                    config.build,
                    tag=tag,
                    dockerfile=config.dockerfile,
                    buildargs=dict(config.build_args),
                )
            else:
                image = await asyncio.to_thread(engine.image, str(config.image))
        except ContainerError as exc:
            progress.clear()
            print(f"graceful harness: {exc}", file=sys.stderr)
            return 2
        return await body(engine, image, config.settings())
    except asyncio.CancelledError:
        progress.clear()
        interrupted = True
        print("graceful harness: stopped; removing what this run created", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:  # a signal from here on is noted: the clean-up ends, the verdict stays
        cleanup = await engine.aclose(on_signal=lambda: progress.line(_ONE_MOMENT))
        if interrupted or cleanup.left:  # said only once it is known
            print(f"graceful harness: {cleanup.summary()}", file=sys.stderr)


class Progress:
    """A live status line on a terminal; plain lines elsewhere (CI logs)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.total = 0
        self.done = 0
        self._started = time.monotonic()
        self._shown = False

    def update(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        counter = f"[{self.done + 1}/{self.total}] " if self.total else ""
        line = f"{counter}{text}  ({elapsed:.0f} s)"
        if self.tty:
            self.out.write("\r\033[K" + line)
            self._shown = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        """A line that stays (a round's result), under the status line."""
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()

    def result(self, result: object) -> None:
        from graceful.harness.report import ScenarioResult

        assert isinstance(result, ScenarioResult)
        self.done += 1
        self.clear()
        first = "" if result.passed else result.headline
        self.out.write(f"{result.verdict.value} {result.name}{': ' + first if first else ''}\n")
        self.out.flush()

    def clear(self) -> None:
        if self.tty and self._shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._shown = False

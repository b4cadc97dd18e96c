"""The harness tells the truth about any image, including ones that do not speak its contract.

Real images from tests/images/ on a real engine: a plain-uvicorn app whose slow endpoint reads
whole seconds and whose event stream never ends, graceful on uvicorn with a stream that awaits
the stop (or ignores it), a server that accepts and abandons connections after its stop began,
a wrapper script that does not ``exec``. Each verdict comes with its control: the same image
judged another way, or another image judged the same way.

Synchronous tests, like tests/test_harness_docker.py: a container scenario gains nothing from
running once per event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness_servers import harness_run, images_or_skip

if TYPE_CHECKING:
    from graceful.harness.container import ImageInfo
    from graceful.harness.context import Settings
    from graceful.harness.engine import Engine
    from graceful.harness.report import Report, ScenarioResult
    from graceful.harness.workload import Workload

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STOP_TIMEOUT = 3


@pytest.fixture(scope="session")
def test_images(graceful_engine: Engine) -> dict[str, ImageInfo]:
    return images_or_skip(graceful_engine)


@pytest.fixture(autouse=True)
def nothing_left_behind(graceful_engine: Engine) -> Iterator[None]:
    """Every container and volume a test's scenarios started is gone when they end."""
    yield
    selector = {"label": f"graceful.harness={graceful_engine.run_id}"}
    client = graceful_engine.client
    assert client.containers.list(all=True, filters=selector) == []
    assert client.volumes.list(filters=selector) == []


def settings(workload: Workload | None = None, **kw: object) -> Settings:
    from graceful.harness.context import Settings
    from graceful.harness.workload import Workload

    return Settings(stop_timeout=STOP_TIMEOUT, workload=workload or Workload(), **kw)  # type: ignore[arg-type]


def run(engine: Engine, image: ImageInfo, names: list[str], s: Settings) -> Report:
    from graceful.harness.scenarios import make_scenarios, run_scenarios

    return asyncio.run(run_scenarios(engine, image, make_scenarios(names), s))


def only(report: Report) -> ScenarioResult:
    (result,) = report.scenarios
    return result


def fastapi_like(**overrides: str) -> Workload:
    """How a user describes the plain-uvicorn app: no admin port, /health on the main port,
    a slow endpoint in whole seconds, an event stream, no items, no volume."""
    from graceful.harness.workload import Workload

    fields: dict[str, str | None] = {
        "work_url": "/slow?s={seconds}",
        "ready_path": "/health",
        "stream_path": "/events",
        "items_path": "",
        "volume_path": "",
        "report_event": "",
    }
    fields.update(overrides)
    return Workload(admin_port=None, **fields)  # type: ignore[arg-type]


def test_a_seconds_endpoint_judged_with_work_url_gets_real_long_requests(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """``--work-url '/slow?s={seconds}'``: the requests longer than the budget ask for 8 s,
    and are still in flight when the stop begins (plain uvicorn then waits for them: 137).

    Control: the same app judged with the old fixed ``?ms=N`` (what ``--work-path /slow``
    asks): its endpoint ignores ``ms`` and sleeps its default 2 s, so the "long" requests were
    never longer than the budget. The old harness said "4 requests of 15000 ms in flight"
    there; now the preflight finds out and the scenario is SKIPPED, saying why.
    """
    image = test_images["plain-uvicorn"]
    report = run(graceful_engine, image, ["stop-over-budget"], settings(fastapi_like()))
    result = only(report)
    assert any(line.startswith("long work: yes: GET /slow?s=1 took") for line in report.contract)
    text = "\n".join(result.findings)
    assert "4 requests for 8 s (GET /slow?s=8) were in flight when the stop began" in text
    assert result.verdict == "FAIL"  # uvicorn waits for them: SIGKILL
    assert result.exit_code == 137

    ms = run(
        graceful_engine,
        image,
        ["stop-over-budget"],
        settings(fastapi_like(work_url="/slow?ms={ms}")),
    )
    skipped = only(ms)
    assert skipped.verdict == "SKIPPED"
    assert "does not read the duration it is asked for" in skipped.reasons[0]
    assert "--work-url" in skipped.reasons[0]
    assert skipped.exit_code is None  # nothing was started to be judged


def test_plain_uvicorn_with_an_endless_stream_fails_stop_during_stream(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """An untouched plain-uvicorn app whose SSE stream never ends: docker stop with a client
    listening ends in SIGKILL (137), and the finding says the stream held the drain.

    Control: the same image stopped with no stream open exits 0 at once (stop-idle), so the
    137 is the stream's doing.
    """
    image = test_images["plain-uvicorn"]
    report = run(
        graceful_engine, image, ["stop-during-stream", "stop-idle"], settings(fastapi_like())
    )
    stream, idle = report.scenarios
    assert stream.verdict == "FAIL"
    assert stream.exit_code == 137
    assert "streams were held open until docker stop's 3 s timeout ran out" in stream.problems[0]
    assert "await the stop event" in stream.problems[0]
    assert idle.verdict == "PASS", idle.findings
    assert idle.exit_code == 0


@pytest.mark.parametrize(
    ("mode", "verdict", "exit_code", "finding"),
    [
        ("await", "PASS", 0, "note: all 3 event streams open at the stop ended cleanly"),
        ("ignore", "FAIL", 3, "3 of 3 streams were cut mid-body"),
    ],
)
def test_a_graceful_stream_passes_only_when_it_awaits_the_stop(
    graceful_engine: Engine,
    test_images: dict[str, ImageInfo],
    mode: str,
    verdict: str,
    exit_code: int,
    finding: str,
) -> None:
    """graceful on uvicorn: a stream that awaits ``draining(scope)`` sends its last event and
    ends (PASS); one that ignores it is cancelled at the drain deadline, mid-body (FAIL, exit
    3). Each case is the other's control."""
    from graceful.harness.workload import Workload

    s = settings(Workload(items_path="", volume_path=""), env=(("STREAM_MODE", mode),))
    result = only(run(graceful_engine, test_images["graceful-uvicorn"], ["stop-during-stream"], s))
    assert result.verdict == verdict, result.findings
    assert result.exit_code == exit_code
    assert any(f.startswith(finding) for f in result.findings), result.findings


def harness_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return harness_run("--stop-timeout", str(STOP_TIMEOUT), *args)


def test_no_items_path_skips_kill_under_load_and_the_summary_says_so(
    graceful_engine: Engine, test_images: dict[str, ImageInfo], tmp_path: Path
) -> None:
    """Without an items path ``kill-under-load`` is SKIPPED, not passed: the summary does not
    say "all passed", the JSON says ``SKIPPED`` (and ``passed: false``), the exit code is 0,
    and ``--strict`` makes it 1. (The old harness printed "note: not run" and counted a pass.)
    The control, every scenario passing, is in test_cli_exit_status_and_json_report."""
    out = tmp_path / "report.json"
    image = test_images["good"].ref
    lenient = harness_cli(
        "--image", image, "--items-path", "", "--scenario", "stop-idle,kill-under-load",
        "--json", str(out),
    )  # fmt: skip
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    summary = next(ln for ln in lenient.stdout.splitlines() if "(of 2 scenarios)" in ln)
    assert summary == "1 passed, 1 skipped (of 2 scenarios)"
    assert "SKIPPED kill-under-load: skipped: needs items: no items path" in lenient.stderr
    data = json.loads(out.read_text())
    kill = data["scenarios"][1]
    assert (kill["name"], kill["verdict"], kill["passed"]) == ("kill-under-load", "SKIPPED", False)
    assert data["summary"] == {"PASS": 1, "FAIL": 0, "SKIPPED": 1, "INCONCLUSIVE": 0}

    strict = harness_cli(
        "--image", image, "--items-path", "", "--scenario", "kill-under-load", "--strict"
    )  # fmt: skip
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "0 passed, 1 skipped (of 1 scenario)" in strict.stdout


def test_a_server_that_accepts_and_abandons_connections_fails_stop_under_load(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """The ``abandon`` image stops well in every other respect (in-flight answered, /readyz
    503, exit 0, writes kept), but its listener stays open after the stop began and what it
    takes is never answered (its stop lasts about 2 s: what it took hangs past the probes' 1 s,
    or is reset when it exits). The numbers tell it from the one-connection backlog race.

    Control: everything else held, so the harness without this check (probes that time out
    counted as nothing) passed it; the ``good`` image, which closes its listener, passes the
    same scenario (test_the_good_image_passes_every_scenario).
    """
    result = only(run(graceful_engine, test_images["abandon"], ["stop-under-load"], settings()))
    assert result.verdict == "FAIL"
    assert result.exit_code == 0
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert problem.startswith("new connections were accepted and abandoned after the stop began")
    counts = problem.split("(", 1)[1].split(")", 1)[0]
    abandoned = int(counts.split(" of ")[0]) + int(counts.split(", ")[1].split(" were")[0])
    assert abandoned >= 5, counts  # far from the single connection of the backlog race
    assert result.failed == 0


def test_a_wrapper_script_gets_the_exec_advice_only(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """A wrapper script that does not exec: /bin/sh is PID 1, docker stop ends in SIGKILL,
    and the advice is `exec`, never --init.

    Control, and why not --init: under Docker's init the shell gets SIGTERM and dies of it;
    the container exits 143 at once and the server with it (its work cut). The harness names
    that too, with the same advice.
    """
    image = test_images["wrapper"]
    result = only(run(graceful_engine, image, ["stop-idle"], settings()))
    assert result.exit_code == 137
    assert "PID 1 is a shell (/bin/sh /app/run.sh)" in result.problems[0]
    assert "`exec`" in result.problems[0]
    assert not any("--init" in f for f in result.findings)

    under_init = only(run(graceful_engine, image, ["stop-idle"], settings(init=True)))
    assert under_init.exit_code == 143
    assert "a shell (/bin/sh /app/run.sh), which died of it" in under_init.problems[0]
    assert "`exec`" in under_init.problems[0]


def test_an_admin_server_on_loopback_is_diagnosed(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """graceful's admin server binds 127.0.0.1 unless ADMIN_HOST says otherwise; the harness
    passes ADMIN_HOST=0.0.0.0 with ADMIN_PORT (the stream tests above are ready that way).
    When something sets it back, the admin port never answers, and the finding says why
    from the ``admin.listening`` log line instead of only "not ready"."""
    from graceful.harness.workload import Workload

    s = settings(
        Workload(items_path="", volume_path=""),
        env=(("ADMIN_HOST", "127.0.0.1"),),
        startup_timeout=5.0,
    )
    result = only(run(graceful_engine, test_images["graceful-uvicorn"], ["stop-idle"], s))
    assert result.verdict == "FAIL"
    assert "the admin server listens on 127.0.0.1 inside the container" in result.problems[0]


def test_clean_spares_the_objects_of_runs_still_going(graceful_engine: Engine) -> None:
    """``graceful harness clean`` removes what a run that is over left behind, and keeps the
    objects of a run still going (this session's own), which the old clean removed too."""
    import docker.errors

    from graceful.harness.engine import LABEL, clean_up
    from graceful.harness.runs import OWNER_LABEL, owner

    client = graceful_engine.client
    ours = graceful_engine.volume()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_owner = owner(int(ended.stdout))  # that process is gone: no start time
    leftover = client.volumes.create(
        name=f"graceful-harness-h11-over-{graceful_engine.run_id}",
        labels={LABEL: f"over-{graceful_engine.run_id}", OWNER_LABEL: dead_owner},
    )
    try:
        removed, kept = clean_up(client)
        assert removed >= 1
        assert graceful_engine.run_id in kept
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get(leftover.name)
        assert client.volumes.get(ours) is not None
    finally:
        client.api.remove_volume(ours, force=True)


def test_a_container_that_fails_to_start_is_removed_with_its_volume(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """A sidecar from an image without ``python3`` fails to start; what was created for it
    (the container, the anonymous volume of the image's ``VOLUME /data``) goes at once, not
    when the run ends (or never, if the run is killed).

    Control: the SDK's own ``containers.run`` (what the harness called before) leaves the
    created container, and with it its volume.
    """
    import docker.errors

    client = graceful_engine.client
    ref = test_images["good"].ref
    missing = ["/no/such/executable"]
    leaky_name = f"graceful-harness-{graceful_engine.run_id}-leaky"
    with pytest.raises(docker.errors.APIError):
        client.containers.run(ref, entrypoint=missing, name=leaky_name, detach=True)
    leaky = client.containers.get(leaky_name)
    (mount,) = [m for m in leaky.attrs["Mounts"] if m["Destination"] == "/data"]
    client.api.remove_container(leaky.id, force=True, v=True)
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(mount["Name"])  # removed only now, by hand

    name = f"graceful-harness-{graceful_engine.run_id}-failed"
    with pytest.raises(docker.errors.APIError):
        graceful_engine.run(ref, entrypoint=missing, healthcheck=False, name=name)
    # Removed through engine.remove(), which takes the anonymous volumes with the container
    # (test_clean_up_removes_anonymous_volumes), before the run ends.
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)


def example_image(engine: Engine) -> ImageInfo:
    """The project's uvicorn example (built by docker/build.sh): the honest control."""
    from tests.test_harness_power import example_or_skip

    return example_or_skip(engine, "graceful-example-asgi")


def test_work_answered_done_at_the_stop_without_doing_it_fails(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Issue B4: the ``fake-done`` image answers every ``/work?ms=N`` in flight 200 the moment
    SIGTERM arrives, then exits 0: every other check passed it (in-flight "answered", a clean
    exit). The ledger's times show the answers came seconds before the work asked for.

    Control: the uvicorn example, which does the work it is asked (and cuts what does not fit
    the budget with an error, never a success), passes both scenarios without the finding.
    """
    names = ["stop-under-load", "stop-over-budget"]
    report = run(graceful_engine, test_images["fake-done"], names, settings())
    for result in report.scenarios:
        assert result.verdict == "FAIL", (result.name, result.findings)
        assert result.exit_code == 0
        (problem,) = [p for p in result.problems if "the work was not done" in p]
        assert re.search(r"\d+ requests? asking for \d+ ms (was|were) answered in", problem)
        assert "after the stop began" in problem

    honest = run(graceful_engine, example_image(graceful_engine), names, settings())
    for result in honest.scenarios:
        assert result.verdict == "PASS", (result.name, result.findings)
        assert not any("the work was not done" in x for x in result.findings)


def test_a_write_acknowledged_before_it_is_stored_fails_kill_under_load(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """Issue B5: the ``ack-then-write`` image answers a write, then stores it (fsynced) a few
    milliseconds later. One SIGKILL per run passed it in 2 runs of 6; kill-under-load now
    kills 3 times on one volume, one ledger, and says how many kills its verdict rests on.

    Control: the uvicorn example (fsync, then the answer) passes, with the same count of
    kills and the pointer to ``graceful harness soak`` for more.
    """
    result = only(
        run(graceful_engine, test_images["ack-then-write"], ["kill-under-load"], settings())
    )
    assert result.verdict == "FAIL", result.findings
    assert result.lost > 0
    assert "acknowledged writes lost" in result.problems[0]
    assert any(x.startswith("note: 3 SIGKILLs under write load") for x in result.findings)

    example = example_image(graceful_engine)
    control = only(run(graceful_engine, example, ["kill-under-load"], settings()))
    assert control.verdict == "PASS", control.findings
    assert (control.exit_code, control.lost) == (137, 0)
    assert control.acked >= 90  # 30 in each of the 3 rounds
    sampled = next(x for x in control.findings if "SIGKILLs under write load" in x)
    assert "3 SIGKILLs" in sampled
    assert "graceful harness soak --faults kill" in sampled


def test_signals_on_an_image_without_the_work_endpoint_judges_no_request_of_ours(
    graceful_engine: Engine, test_images: dict[str, ImageInfo]
) -> None:
    """An image without the work URL (the README's FastAPI app before it had /slow): the
    preflight says "work: no", ``signals`` sends no long requests and so no settling request
    either, and passes. The old scenario still sent its settling ``GET /work?ms=0``, whose 404
    the judge counted as a cut in-flight request: FAIL for an image that stops correctly.

    Control: the same image whose work URL exists gets its long requests judged (2 in flight
    at SIGINT, answered)."""
    from graceful.harness.workload import Workload

    image = test_images["graceful-uvicorn"]
    missing = Workload(work_url="/missing?ms={ms}", items_path="", volume_path="")
    report = run(graceful_engine, image, ["signals"], settings(missing))
    assert any(line.startswith("work: no") for line in report.contract), report.contract
    result = only(report)
    assert result.verdict == "PASS", result.findings
    assert not any("cut" in finding or "404" in finding for finding in result.findings)

    control = only(run(graceful_engine, image, ["signals"], settings(Workload(items_path=""))))
    assert control.verdict == "PASS", control.findings
    assert any("2 still in flight when it began" in f for f in control.findings)

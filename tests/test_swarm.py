"""The swarm-update scenario: a Docker Swarm service updated behind HAProxy, under load.

1. Without an engine: the balancer's profiles and their arithmetic (the smallest
   GRACEFUL_DELAY each needs), the command-line form of a profile and what a bad one says,
   the packaged HAProxy file reads every setting the profiles pass, the scenario is opt-in,
   ``graceful config`` prints the matching Swarm settings, a state comparison names what
   changed.
2. On Docker, short enough for ``make test``: one start-first roll of two tasks under the
   ``fast`` profile passes, every replaced task exits 0, and the engine's swarm state,
   services and networks are as before; an engine in a swarm with a service the harness does
   not own is refused and left alone.

The long runs (the plain-uvicorn control under both profiles, the delay-0 control, the full
three rolls from the command line, the stack file, Ctrl-C) are tests/test_swarm_long.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from graceful import cli
from graceful.harness.cluster import LB_IMAGE
from graceful.harness.pytest_plugin import in_ci
from graceful.harness.scenarios import make_scenarios, scenario_names
from graceful.harness.scenarios.swarm import SwarmUpdate, configure
from graceful.harness.swarm_profile import PROFILES, SWARM_WAIT_S, parse_profile
from graceful.harness.swarm_state import SwarmState, swarm_state, take_lock
from tests.support import ROOT

if TYPE_CHECKING:
    from graceful.harness.engine import Engine
    from graceful.harness.report import ScenarioResult

CONF = ROOT / "graceful" / "harness" / "haproxy_swarm.conf"
EXAMPLE = "graceful-example-asgi"


def swarm_view(client: Any, *networks: str) -> SwarmState:
    """The part of the engine a swarm run may touch: its swarm state, services, the swarm's
    networks and ``networks`` (other agents' bridge networks come and go on a shared engine)."""
    return swarm_state(client).only(networks)


# -- 1. without an engine ---------------------------------------------------------------------


def test_the_default_profile_is_haproxys_everyday_one_and_needs_a_delay() -> None:
    default, fast = PROFILES["default"], PROFILES["fast"]
    assert (default.hold_valid, default.hold_obsolete, default.resolve) == (10, 30, 1)
    assert (default.inter, default.fall) == (2, 3)
    assert (fast.hold_valid, fast.hold_obsolete, fast.resolve) == (1, 1, 0.5)
    assert (fast.inter, fast.fall) == (0.5, 1)
    # DNS forgets a task 31 s after Swarm dropped it (29 s after the signal); the check marks
    # it down 2 x 3 + 1 = 7 s after /readyz went 503: the sooner, 7 s, is what the delay covers.
    assert default.needed_delay() == 7.0
    assert default.delay() == 8
    # fast: DNS forgets it 1.5 s after the drop, before Swarm's ~2 s wait ends: no delay needed.
    assert fast.dns_seconds - SWARM_WAIT_S < 0
    assert fast.needed_delay() == 0.0
    assert "GRACEFUL_DELAY >= 7 s" in default.arithmetic()
    assert SwarmUpdate().profile == default
    assert SwarmUpdate().graceful_delay == 8
    # The stop timeout is raised so an 8 s delay still leaves a drain; never lowered.
    assert SwarmUpdate().stop_timeout(10) == 15
    assert SwarmUpdate().stop_timeout(30) == 30
    assert SwarmUpdate(delay=0).stop_timeout(10) == 10


def test_profiles_from_the_command_line() -> None:
    assert parse_profile("default") == PROFILES["default"]
    assert parse_profile("fast") == PROFILES["fast"]
    custom = parse_profile("hold-valid=5s,inter=1500ms,fall=2")
    assert (custom.hold_valid, custom.hold_obsolete, custom.resolve) == (5, 30, 1)
    assert (custom.inter, custom.fall) == (1.5, 2)
    assert custom.name.startswith("default+")
    assert custom.env()["LB_INTER"] == "1500ms"
    assert custom.env()["LB_HOLD_VALID"] == "5s"
    tuned = parse_profile("fast, hold-obsolete=10s, fall=3")
    assert (tuned.inter, tuned.fall, tuned.hold_obsolete) == (0.5, 3, 10)
    assert tuned.needed_delay() == 2.5  # inter 0.5 x fall 3 + timeout check 1 < 10.5 - 2
    assert parse_profile("hold-obsolete=0s").needed_delay() == 0.0  # 0 + 1 s resolve < 2 s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("fast,", "empty item"),
        ("slow", "unknown profile 'slow'"),
        ("inter=2s,wait=1s", "unknown setting 'wait'"),
        ("inter=two", "inter='two' is not a time"),
        ("inter=-1s", "inter='-1s' is not a time"),
        ("inter=0s", "inter=0 s is out of range"),
        ("hold-valid=1e9", "is not a time"),
        ("hold-valid=100000s", "hold-valid=100000 s is out of range"),
        ("fall=0", "fall=0 is out of range"),
        ("fall=2.5", "fall='2.5' is not a whole number"),
        ("fall=\uff11", "is not a whole number"),  # a full-width 1: isdigit() alone says yes
        ("inter=1s,inter=2s", "inter is given twice"),
    ],
)
def test_a_bad_profile_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_profile(text)


def test_a_bad_profile_stops_the_cli_before_any_engine(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 and one line naming the option, before Docker is asked anything (no image named
    on purpose: the option is checked first)."""
    proc = subprocess.run(
        [sys.executable, "-m", "graceful.harness", "run", "--image", "no-such-image:x",
         "--scenario", "swarm-update", "--swarm-lb", "fast,fall=0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--swarm-lb: fall=0 is out of range (1 to 100)" in proc.stderr
    assert "no-such-image" not in proc.stderr
    args = type("Args", (), {"swarm_lb": "fast", "swarm_delay": float("nan")})()
    with pytest.raises(ValueError, match="--swarm-delay: nan is out of range"):
        configure(make_scenarios(["swarm-update"]), args)


def test_the_packaged_config_reads_every_profile_setting() -> None:
    """Every variable a profile (and the scenario) passes is read by the HAProxy file, with
    HAProxy's own default beside it, and the file holds no variable nobody sets."""
    text = CONF.read_text()
    used = set(re.findall(r"\$\{(LB_\w+)-", text))
    passed = set(PROFILES["default"].env()) | {
        "LB_SERVICE", "LB_SLOTS", "LB_APP_PORT", "LB_CHECK_PORT", "LB_CHECK_PATH",
    }  # fmt: skip
    assert passed <= used
    assert used - passed == {"LB_DNS"}  # Docker's embedded DNS, never changed
    # The file's defaults are the default profile's values.
    for key, value in PROFILES["default"].env().items():
        assert f"${{{key}-{value}}}" in text, key
    # Retrying nothing is the point: the balancer must hand every dropped request over.
    assert "retries 0" in text
    assert "no option redispatch" in text
    # The stack file gives the balancer this same file (one copy).
    stack = (ROOT / "deploy" / "swarm" / "stack.yml").read_text()
    assert "file: ../../graceful/harness/haproxy_swarm.conf" in stack


def test_swarm_update_is_opt_in() -> None:
    assert "swarm-update" not in scenario_names()
    assert "swarm-update" in scenario_names(opt_in=True)
    (scenario,) = make_scenarios(["swarm-update"])
    assert isinstance(scenario, SwarmUpdate)
    assert scenario.rolls == ("stop-first", "start-first", "one-replica")
    assert scenario.replicas == 3
    with pytest.raises(ValueError, match="unknown roll 'sideways'"):
        SwarmUpdate(rolls=("sideways",))


def test_graceful_config_prints_the_swarm_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRACEFUL_STOP_TIMEOUT", "15")
    monkeypatch.setenv("GRACEFUL_DELAY", "8")
    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    assert "stop_grace_period    15s" in text
    assert "update_config.order  start-first" in text
    assert "within 10 s of it leaving DNS" in text
    assert cli.main(["config", "--json"]) == 0
    swarm = json.loads(capsys.readouterr().out)["swarm"]
    assert swarm["stop_grace_period"] == "15s"
    assert swarm["healthcheck"] == "graceful probe readyz"
    assert (swarm["lb_dns_max_s"], swarm["lb_check_max_s"]) == (10.0, 8.0)
    # The default profile's needs (7 s) fit the stack file's delay (8 s).
    assert PROFILES["default"].needed_delay() <= swarm["lb_check_max_s"]


def test_a_state_comparison_names_what_changed() -> None:
    before = SwarmState("inactive", frozenset(), frozenset({"bridge", "host", "none"}))
    after = SwarmState("active", frozenset({"x-app"}), frozenset({"bridge", "docker_gwbridge"}))
    assert before.differences(before) == []
    assert before.differences(after) == [
        "swarm state 'active', was 'inactive'",
        "services left: x-app",
        "networks left: docker_gwbridge",
        "networks gone: host, none",
    ]


# -- 2. on Docker, short ----------------------------------------------------------------------


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def swarm_images(graceful_engine: Engine) -> None:
    import docker.errors

    for ref in (EXAMPLE, LB_IMAGE):
        try:
            graceful_engine.client.images.get(ref)
        except docker.errors.ImageNotFound:
            _missing(f"{ref} is not built: run `bash docker/build.sh`")


def run_swarm(engine: Engine, ref: str, scenario: SwarmUpdate) -> ScenarioResult:
    from graceful.harness.context import Settings
    from graceful.harness.scenarios import run_scenarios

    report = asyncio.run(run_scenarios(engine, engine.image(ref), [scenario], Settings()))
    (result,) = report.scenarios
    print(report.table(width=250))  # shown by pytest -rA / on failure: the measured numbers
    return result


@pytest.mark.docker
def test_a_short_start_first_roll_loses_nothing_and_leaves_the_engine_as_it_was(
    graceful_engine: Engine, swarm_images: None
) -> None:
    """1. Note the engine's swarm state, services and networks.
    2. Two tasks of the example behind HAProxy (fast profile), load through the balancer's
       127.0.0.1 port, one ``docker service update --force --update-order start-first``.

    Result: PASS, no failed request, both replaced tasks exited 0 (Swarm's record), the
    update completed, and the engine's state is what it was in step 1.
    """
    before = swarm_view(graceful_engine.client)
    scenario = SwarmUpdate(replicas=2, rolls=("start-first",), profile=PROFILES["fast"])
    result = run_swarm(graceful_engine, EXAMPLE, scenario)
    assert result.passed, result.findings
    assert result.failed == 0
    assert result.sent > 100
    assert result.exit_code == 0
    text = "\n".join(result.findings)
    assert re.search(r"roll 1 \(start-first, completed in \d+ s\): 0 of \d+ requests failed; "
                     r"2 tasks stopped \(exit 0\)", text), text  # fmt: skip
    assert "the engine's swarm state, services and networks are as they were" in text
    assert swarm_view(graceful_engine.client) == before


@pytest.mark.docker
def test_a_swarm_with_a_service_of_someone_else_is_refused_and_left_alone(
    graceful_engine: Engine, swarm_images: None
) -> None:
    """1. Put the engine in a swarm with one service the harness does not own.
    2. Run the scenario.

    Result: FAIL with the reason (a service the harness does not own, named); the swarm, its
    service and the networks are untouched. The test itself then removes what it made.
    """
    import docker.errors

    client = graceful_engine.client
    lock = take_lock()  # swarm runs on this machine take turns
    before = swarm_view(client)
    if before.node_state != "inactive":
        lock.close()
        pytest.skip("the engine is already in a swarm: this test makes its own")
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        theirs = client.services.create(LB_IMAGE, name="someone-elses-lb")
        deadline = time.monotonic() + 60
        while not any(t["Status"]["State"] == "running" for t in theirs.tasks()):
            assert time.monotonic() < deadline, theirs.tasks()
            time.sleep(0.2)
        during = swarm_view(client)
        lock.close()  # the harness takes it for its run
        result = run_swarm(graceful_engine, EXAMPLE, SwarmUpdate(replicas=1))
        lock = take_lock()
        assert not result.passed
        (problem,) = result.problems
        assert "1 service(s) the harness does not own (someone-elses-lb)" in problem
        after = swarm_view(client)
        assert (after.node_state, after.services) == (during.node_state, during.services)
        # The engine makes docker_gwbridge by itself, some time after the swarm's first task;
        # whatever else the harness might have touched must be as it was.
        gwbridge = {"docker_gwbridge"}
        assert after.networks - gwbridge == during.networks - gwbridge
        assert gwbridge & during.networks <= after.networks
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.services.get("someone-elses-lb").remove()
        with contextlib.suppress(docker.errors.APIError):
            client.swarm.leave(force=True)
        if "docker_gwbridge" not in before.networks:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_network("docker_gwbridge")
        lock.close()

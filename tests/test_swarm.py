"""The swarm-update scenario: a Docker Swarm service updated behind HAProxy, under load.

1. Without an engine: the balancer's profiles and their arithmetic (the smallest
   GRACEFUL_DELAY each needs), the command-line form of a profile and what a bad one says,
   the packaged HAProxy file reads every setting the profiles pass, the scenario is opt-in,
   ``graceful config`` prints the matching Swarm settings (and what the probe and the delay
   need), a state comparison names what changed; a run stopped while it waits for the swarm
   lock ends at once and touches nothing; a refusal (an unusable lock) is SKIPPED, not FAIL;
   bad ``--swarm-delay`` values are refused by name; a task that never becomes healthy is
   named with its health check's output.
2. On Docker, short enough for ``make test``: one start-first roll of two tasks under the
   ``fast`` profile passes, every replaced task exits 0, and the engine's swarm state,
   services and networks are as before; an engine in a swarm with a service the harness does
   not own is SKIPPED and left alone; a swarm a killed run left is cleaned before the state
   is noted.

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
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from graceful import cli
from graceful.harness import swarm_state as swarm_state_module
from graceful.harness.cluster import LB_IMAGE
from graceful.harness.container import ContainerError
from graceful.harness.pytest_plugin import in_ci
from graceful.harness.report import Verdict
from graceful.harness.scenarios import make_scenarios, scenario_names
from graceful.harness.scenarios.swarm import SwarmUpdate, configure
from graceful.harness.swarm import Swarm
from graceful.harness.swarm_profile import PROFILES, SWARM_WAIT_S, parse_profile
from graceful.harness.swarm_report import SwarmOutcome, delay_words
from graceful.harness.swarm_state import (
    LockWaitStopped,
    SwarmRefused,
    SwarmState,
    swarm_state,
    take_lock,
)
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


def test_a_run_stopped_while_waiting_for_the_lock_ends_at_once_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run holds the lock; this one waits in Swarm.open and is stopped. It ends within
    a poll (not when the lock is free) and never asks the engine anything. Control: without
    the stop, the same wait runs until its timeout."""
    monkeypatch.setattr(swarm_state_module, "LOCK_PATH", tmp_path / "lock")
    held = take_lock()
    try:
        swarm = Swarm(_NoEngine(), lock_timeout=60.0)  # type: ignore[arg-type]
        errors: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catch(errors, swarm.open))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # waiting for the lock
        started = time.monotonic()
        swarm.stopping.set()
        thread.join(5.0)
        assert not thread.is_alive()
        assert time.monotonic() - started < 1.0
        assert [type(e) for e in errors] == [LockWaitStopped]
        assert swarm.before is None
        assert swarm.close() == []
        # Control: not stopped, the wait lasts its timeout.
        started = time.monotonic()
        with pytest.raises(SwarmRefused, match=r"held .* for 0\.6 s"):
            take_lock(0.6)
        assert time.monotonic() - started >= 0.6
    finally:
        held.close()


def test_an_error_of_a_call_whose_caller_was_cancelled_is_retrieved() -> None:
    """Swarm.run shields the engine call from a Ctrl-C; settle() waits for it and retrieves
    its error, so asyncio prints no "Future exception was never retrieved"."""

    def refuse() -> None:
        time.sleep(0.2)
        raise SwarmRefused("refused")

    async def main() -> Swarm:
        swarm = Swarm(_NoEngine())  # type: ignore[arg-type]
        task = asyncio.ensure_future(swarm.run(refuse))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert swarm.busy
        await swarm.settle()
        return swarm

    swarm = asyncio.run(main())
    (call,) = swarm._calls
    assert isinstance(call.exception(), SwarmRefused)
    assert not call._log_traceback  # type: ignore[attr-defined]  # what asyncio would print


def test_an_unusable_lock_path_is_a_refusal_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(swarm_state_module, "LOCK_PATH", tmp_path)  # a directory
    with pytest.raises(SwarmRefused, match=f"swarm lock {re.escape(str(tmp_path))}: Is a dir"):
        take_lock(0.0)


def test_an_engine_the_scenario_cannot_use_is_skipped_not_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal (someone else's swarm, an unusable lock) is the engine's, not the image's:
    SKIPPED with the cause. Control: something left behind on top of it still FAILs."""

    def measured(left: list[str]) -> Any:
        async def measure(self: SwarmUpdate, ctx: Any) -> SwarmOutcome:
            return SwarmOutcome(PROFILES["fast"], 0.0, 10, refused="a swarm with x", left=left)

        return measure

    monkeypatch.setattr(SwarmUpdate, "measure", measured([]))
    result = asyncio.run(SwarmUpdate().run(None))  # type: ignore[arg-type]
    assert result.verdict is Verdict.SKIPPED
    assert "not run on this machine's engine: a swarm with x" in result.findings[0]
    monkeypatch.setattr(SwarmUpdate, "measure", measured(["networks left: y"]))
    assert asyncio.run(SwarmUpdate().run(None)).verdict is Verdict.FAIL  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lb", "delay", "message"),
    [
        ("", None, "--swarm-lb: '' is empty"),
        ("fast", "\uff18", "--swarm-delay: '\uff18' is not a number"),  # a full-width 8
        ("fast", "1e9", "is not a number"),
        ("fast", "184", "--swarm-delay: 184 s is more than the 183 s"),
        ("hold-valid=\u0661s", None, "is not a time"),  # an Arabic-Indic 1
    ],
)
def test_bad_swarm_options_are_refused_by_name(lb: str, delay: str | None, message: str) -> None:
    args = type("Args", (), {"swarm_lb": lb, "swarm_delay": delay})()
    with pytest.raises(ValueError, match=re.escape(message)):
        configure(make_scenarios(["swarm-update"]), args)


def test_the_largest_delay_and_minus_zero() -> None:
    args = type("Args", (), {"swarm_lb": "fast", "swarm_delay": "183"})()
    (scenario,) = configure(make_scenarios(["swarm-update"]), args)
    assert scenario.delay == 183  # 3 x (183 + 7 + 10) = 600
    args.swarm_delay = "-0"
    (scenario,) = configure(make_scenarios(["swarm-update"]), args)
    assert f"{scenario.delay:g}" == "0"


def test_graceful_config_says_what_the_health_check_and_the_delay_need(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ADMIN_PORT", raising=False)
    monkeypatch.setenv("GRACEFUL_STOP_TIMEOUT", "5")
    monkeypatch.setenv("GRACEFUL_DELAY", "8")
    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    assert "graceful probe readyz  (needs ADMIN_PORT, unset here" in text
    assert "GRACEFUL_DELAY=8 is shortened" in text
    monkeypatch.setenv("ADMIN_PORT", "9000")
    monkeypatch.setenv("ADMIN_HOST", "127.0.0.1")
    monkeypatch.setenv("GRACEFUL_STOP_TIMEOUT", "30")
    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    assert "(ADMIN_PORT 9000; a task joins DNS" in text
    assert "warning: ADMIN_HOST=127.0.0.1" in text
    assert "is shortened" not in text
    monkeypatch.setenv("ADMIN_HOST", "0.0.0.0")
    assert cli.main(["config"]) == 0
    assert "warning: ADMIN_HOST" not in capsys.readouterr().out


def test_a_task_that_never_becomes_healthy_is_named_with_its_health_check_output() -> None:
    """Swarm's view of a task whose health check keeps failing: "starting", never "running".
    The wait's error says it never became healthy and quotes the check's last output.
    Control: the same task healthy and running ends the wait at once."""
    task = {"ID": "t" * 25, "DesiredState": "running", "CreatedAt": "2000-01-01",
            "Status": {"State": "starting", "ContainerStatus": {"ContainerID": "c1"}}}  # fmt: skip
    output = "Traceback ...\nurllib.error.URLError: <urlopen error [Errno 111] Connection refused>"
    health = {"Status": "starting", "Log": [{"ExitCode": 1, "Output": output}]}
    client = _FakeClient([task], health)
    swarm = Swarm(_FakeEngine(client))  # type: ignore[arg-type]
    with pytest.raises(ContainerError) as caught:
        swarm.wait_converged("app", 1, what="the first tasks", timeout=0.0)
    message = str(caught.value)
    assert "0 of 1 tasks of app running after 0 s: the others never became healthy" in message
    assert f"the last health check of task {'t' * 12} (starting) exited 1: Traceback" in message
    assert "Connection refused" in message
    task["Status"]["State"] = "running"
    health["Status"] = "healthy"
    swarm.wait_converged("app", 1, what="the first tasks", timeout=0.0)


class _FakeClient:
    def __init__(self, tasks: list[dict[str, Any]], health: dict[str, Any]) -> None:
        container = type("Container", (), {"attrs": {"State": {"Health": health}}})()
        service = type("Service", (), {"tasks": lambda self, **_: list(tasks)})()
        self.services = type("Services", (), {"get": lambda self, name: service})()
        self.containers = type("Containers", (), {"get": lambda self, cid: container})()


class _FakeEngine:
    def __init__(self, client: _FakeClient) -> None:
        self.client = client


def test_the_delay_is_an_environment_variable_a_non_graceful_image_may_ignore() -> None:
    def ctx(graceful: bool) -> Any:
        contract = type("Contract", (), {"has": lambda self, capability: graceful})()
        return type("Ctx", (), {"contract": contract})()

    assert delay_words(ctx(True), 8) == "GRACEFUL_DELAY=8 s"
    words = delay_words(ctx(False), 8)
    assert "GRACEFUL_DELAY=8 s in their environment" in words
    assert "the image may ignore it" in words


class _NoEngine:
    """An engine any use of which fails the test: a stopped run must not touch it."""

    @property
    def client(self) -> Any:
        raise AssertionError("the engine was asked something")


def _catch(errors: list[BaseException], fn: Any) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


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

    Result: SKIPPED (the engine's fault, not the image's) with the reason (a service the
    harness does not own, named); the swarm, its service and the networks are untouched.
    The test itself then removes what it made.
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
        assert result.verdict is Verdict.SKIPPED, result.findings
        assert not result.problems
        assert "1 service(s) the harness does not own (someone-elses-lb)" in result.findings[0]
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
        _leave(client, before)
        lock.close()


@pytest.mark.docker
def test_a_swarm_left_by_a_killed_run_is_cleaned_before_the_state_is_noted(
    graceful_engine: Engine, swarm_images: None
) -> None:
    """1. Leave what a SIGKILLed run leaves: a swarm whose node names a run that is over as
       its maker, that run's labelled service, overlay network and balancer container.
    2. Open a Swarm as a new run does, then close it.

    Result: the killed run's service, network and container are gone before the state is
    noted, which is then "inactive" (the engine before the killed run), so closing finds no
    difference; the engine ends in no swarm. Control: before the open, that run's objects
    were there and the swarm active.
    """
    import docker.errors

    from graceful.harness.runs import OWNER_LABEL
    from graceful.harness.swarm import INIT_LABEL
    from graceful.harness.swarm_clean import sweep

    client = graceful_engine.client
    lock = take_lock()
    before = swarm_view(client)
    if before.node_state != "inactive":
        lock.close()
        pytest.skip("the engine is already in a swarm: this test makes its own")
    dead = graceful_engine.labels[OWNER_LABEL].rsplit("/", 1)[0] + "/0"  # no such start time
    base = f"graceful-harness-killed{graceful_engine.run_id[:6]}"
    labels = {"graceful.harness": f"killed{graceful_engine.run_id[:6]}", OWNER_LABEL: dead}
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        node = client.nodes.get(str(client.info()["Swarm"]["NodeID"]))
        node.update({**node.attrs["Spec"], "Labels": {INIT_LABEL: dead}})
        client.networks.create(f"{base}-swarm", driver="overlay", attachable=True, labels=labels)
        theirs = client.services.create(LB_IMAGE, name=f"{base}-app", labels=labels,
                                        networks=[f"{base}-swarm"])  # fmt: skip
        deadline = time.monotonic() + 60  # the killed run's task ran (and made docker_gwbridge)
        while not any(t["Status"]["State"] == "running" for t in theirs.tasks()):
            assert time.monotonic() < deadline, theirs.tasks()
            time.sleep(0.2)
        balancer = client.containers.create(LB_IMAGE, name=f"{base}-lb", labels=labels)
        assert swarm_view(client).services == {f"{base}-app"}  # control: they are there
        lock.close()  # the new run takes it
        swarm = Swarm(graceful_engine, sweep=sweep)  # as the scenario makes it
        swarm.open()
        assert swarm.before is not None
        assert swarm.before.node_state == "inactive"
        assert not swarm.before.services
        assert f"{base}-swarm" not in swarm.before.networks
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(balancer.id)
        # A run's service takes seconds; the swarm's ingress sandbox makes docker_gwbridge a
        # moment after the init, and a leave before that would find none to remove.
        deadline = time.monotonic() + 10
        while not client.networks.list(names=["docker_gwbridge"]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert swarm.close() == []
        after = swarm_view(client)
        assert after.node_state == "inactive"
        assert after == before  # docker_gwbridge too: the killed run's and this run's are gone
    finally:
        lock.close()
        if swarm_view(client).node_state != "inactive":
            _leave(client, before)
        with contextlib.suppress(docker.errors.APIError):
            client.containers.get(f"{base}-lb").remove(force=True)


def _leave(client: Any, before: SwarmState) -> None:
    """Leave the swarm a test made, and remove docker_gwbridge when it was not there before:
    the ingress sandbox holds it a moment after the leave, so wait for ingress to go first."""
    import docker.errors

    with contextlib.suppress(docker.errors.APIError):
        client.swarm.leave(force=True)
    if "docker_gwbridge" in before.networks:
        return
    deadline = time.monotonic() + 15
    while client.networks.list(names=["ingress"]) and time.monotonic() < deadline:
        time.sleep(0.3)
    while time.monotonic() < deadline:
        try:
            client.api.remove_network("docker_gwbridge")
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            time.sleep(0.3)


def test_the_preflight_checks_graceful_readiness_for_the_scenario() -> None:
    """Run alone, the scenario still has graceful's /readyz checked: it decides the tasks'
    health check (``graceful probe readyz``) and how the report speaks of the delay (was: not
    checked unless another scenario needed it, so a graceful image was told it may ignore
    ``GRACEFUL_DELAY`` and got the ``python3`` health check)."""
    from graceful.harness.contract import Capability
    from graceful.harness.scenarios.registry import wants_of

    assert Capability.ADMIN_READY in wants_of(SwarmUpdate())

"""Configuration: precedence, validation, and budget arithmetic."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from graceful import Config, ConfigError, cli
from graceful.budget import Budget
from graceful.config import ENV_VARS, MAX_SECONDS
from tests.support import APPS, ServiceProcess

LIFECYCLE_APP = APPS / "lifecycle_app.py"


def test_defaults_follow_docker() -> None:
    config = Config()
    assert config.stop_timeout == 10.0
    assert config.signals == ("SIGTERM", "SIGINT")
    assert config.admin_port is None


def test_env_is_read_and_explicit_argument_wins() -> None:
    env = {"GRACEFUL_STOP_TIMEOUT": "30", "GRACEFUL_DELAY": "5", "ADMIN_PORT": "9090"}
    assert Config.from_env(env).stop_timeout == 30.0
    assert Config.from_env(env).delay == 5.0
    assert Config.from_env(env).admin_port == 9090
    assert Config.from_env(env, stop_timeout=7).stop_timeout == 7
    assert Config.from_env({}).stop_timeout == 10.0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GRACEFUL_STOP_TIMEOUT", "abc"),
        ("GRACEFUL_STOP_TIMEOUT", "-1"),
        ("GRACEFUL_STOP_TIMEOUT", "0"),
        ("GRACEFUL_STOP_TIMEOUT", "nan"),
        ("GRACEFUL_DELAY", "-3"),
        ("GRACEFUL_SIGNALS", "SIGTERM,SIGBOGUS"),
        ("GRACEFUL_SIGNALS", "KILL"),
        ("GRACEFUL_LOOP", "trio"),
        ("ADMIN_PORT", "http"),
        ("ADMIN_PORT", "70000"),
        ("GRACEFUL_LOG_LEVEL", "loud"),
    ],
)
def test_bad_env_names_the_variable_and_value(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    assert var in str(info.value)
    assert value.split(",")[-1].replace("SIG", "") in str(info.value)


def test_bad_argument_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="stop_timeout"):
        Config(stop_timeout=-1)
    with pytest.raises(ConfigError, match="margin"):
        Config(stop_timeout=1, margin=2)
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.from_env({}, stop_timout=3)


def test_signal_names_accept_short_forms() -> None:
    assert Config.from_env({"GRACEFUL_SIGNALS": "term, quit"}).signals == ("SIGTERM", "SIGQUIT")


def test_config_that_cannot_fit_is_explained_with_numbers() -> None:
    warnings = Config(stop_timeout=10, delay=5, drain_timeout=8).fit_warnings()
    assert len(warnings) == 1
    assert "delay (5s)" in warnings[0]
    assert "drain_timeout (8s)" in warnings[0]
    assert "stop_timeout (10s)" in warnings[0]
    assert Config(stop_timeout=10, delay=2, drain_timeout=5).fit_warnings() == []
    assert Config(stop_timeout=2, delay=5).fit_warnings()


# The budget's arithmetic (Budget.plan, skip_to_flush, share) is tested in test_budget.py.


# --- errors name where a value came from (issue 9, item 13) -------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GRACEFUL_HOOK_TIMEOUT": "0"}, ["GRACEFUL_HOOK_TIMEOUT='0'"]),
        ({"GRACEFUL_DRAIN_TIMEOUT": "0"}, ["GRACEFUL_DRAIN_TIMEOUT='0'"]),
        ({"GRACEFUL_RESERVE": "-1"}, ["GRACEFUL_RESERVE='-1'"]),
        (
            {"GRACEFUL_MARGIN": "20"},
            ["GRACEFUL_MARGIN='20'", "GRACEFUL_STOP_TIMEOUT (default 10.0)"],
        ),
        (
            {"GRACEFUL_MARGIN": "5", "GRACEFUL_STOP_TIMEOUT": "3"},
            ["GRACEFUL_MARGIN='5'", "GRACEFUL_STOP_TIMEOUT='3'"],
        ),
        ({"ADMIN_HOST": "a..b"}, ["ADMIN_HOST='a..b'"]),
        ({"GRACEFUL_STOP_TIMEOUT": "1e300"}, ["GRACEFUL_STOP_TIMEOUT='1e300'"]),
    ],
)
def test_env_errors_name_the_variable_not_the_field(env: dict[str, str], named: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    message = str(info.value)
    for text in named:
        assert text in message
    fields = ("hook_timeout", "drain_timeout", "reserve", "margin", "stop_timeout", "admin_host")
    assert not any(message.startswith(f"{name}=") for name in fields), message


def test_code_errors_name_the_argument_not_a_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"GRACEFUL_STOP_TIMEOUT": "3"}, margin=5)
    assert "margin=5 must be smaller than GRACEFUL_STOP_TIMEOUT='3'" in str(info.value)
    with pytest.raises(ConfigError, match=r"^hook_timeout=0 must be a positive"):
        Config(hook_timeout=0)
    with pytest.raises(ConfigError, match=r"^signals='SIGTERM' must be a tuple"):
        Config(signals="SIGTERM")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^admin_host=9090 must be an IP address"):
        Config(admin_host=9090)  # type: ignore[arg-type]


REJECTED_SIGNALS = [
    "CHLD", "SEGV", "KILL", "STOP", "BUS", "FPE", "ILL", "WINCH", "URG", "CONT", "TSTP",
    "TTIN", "TTOU", "ALRM", "PIPE", "ABRT", "TRAP", "SYS", "XCPU", "PROF", "IO",
]  # fmt: skip


@pytest.mark.parametrize("name", REJECTED_SIGNALS)
def test_signals_that_do_not_mean_stop_are_rejected(name: str) -> None:
    """SIGCHLD arrives whenever a child exits, SIGWINCH when a terminal resizes, SIGSEGV on a
    crash: any of them as a stop signal would stop a healthy service, or never come."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"GRACEFUL_SIGNALS": f"TERM,{name}"})
    assert f"GRACEFUL_SIGNALS='TERM,{name}'" in str(info.value)
    assert f"SIG{name} " in str(info.value)
    with pytest.raises(ConfigError, match=f"SIG{name}"):
        Config(signals=("SIGTERM", f"SIG{name}"))


def test_stop_signals_are_accepted() -> None:
    env = {"GRACEFUL_SIGNALS": "term,int,quit,hup,usr1,usr2,pwr"}
    assert Config.from_env(env).signals == (
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGPWR",
    )  # fmt: skip


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "::1", "localhost", "my_app.lan"])
def test_admin_host_accepts_addresses_and_host_names(host: str) -> None:
    assert Config.from_env({"ADMIN_HOST": host}).admin_host == host


@pytest.mark.parametrize("host", ["a..b", "x" * 64, "-", "http://x", "1.2.3.4:80", "é.com"])
def test_admin_host_rejects_what_cannot_be_bound(host: str) -> None:
    with pytest.raises(ConfigError, match="ADMIN_HOST="):
        Config.from_env({"ADMIN_HOST": host})


# --- numbers read well in logs (issue 9, item 14) ------------------------------------------------


@given(st.floats(min_value=0.01, max_value=MAX_SECONDS))
def test_derived_margin_and_reserve_are_whole_milliseconds(stop_timeout: float) -> None:
    config = Config(stop_timeout=stop_timeout)
    for value in (config.effective_margin, config.effective_reserve):
        assert value == round(value, 3)
        assert len(repr(value).split(".")[1]) <= 3, repr(value)


def test_service_starting_logs_round_numbers() -> None:
    """0.1 * 3 is 0.30000000000000004 in floating point; the log says 0.3."""
    service = ServiceProcess.python(LIFECYCLE_APP, env={"GRACEFUL_STOP_TIMEOUT": "3"})
    with service:
        starting = service.wait_event("service.starting")
        service.wait_for("APP serving")
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    assert (starting["margin"], starting["reserve"]) == (0.3, 0.6)
    line = next(line for line in service.lines if '"service.starting"' in line)
    assert "0.30000000000000004" not in line
    assert "0.6000000000000001" not in line


# --- every variable, any string (issue 9: property test of the parser) --------------------------

NUMBERISH = st.one_of(
    st.floats().map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["none", "None", "inf", "-inf", "nan", "off", "1_0", "0x10", "1e400", "٣"]),
)
SIGNALISH = st.lists(
    st.one_of(
        st.sampled_from([s.name for s in signal.Signals] + ["term", "sig", "SIGBOGUS", " "]),
        st.text(max_size=8),
    ),
    max_size=4,
).map(",".join)
ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
ENV_VALUES = st.one_of(ANY_TEXT, NUMBERISH, SIGNALISH, st.sampled_from(["auto", "JSON", "Info"]))
TYPES: dict[str, tuple[type, ...]] = {
    "signals": (tuple,),
    "loop": (str,),
    "admin_host": (str,),
    "admin_port": (int, type(None)),
    "log_format": (str,),
    "log_level": (str,),
}


@settings(max_examples=60, deadline=None)
@given(var=st.sampled_from(sorted(ENV_VARS.values())), raw=ENV_VALUES)
def test_any_string_in_any_variable_is_a_valid_value_or_names_it(var: str, raw: str) -> None:
    """Either a ConfigError that quotes ``VAR='raw'``, or a value that works: the right type,
    within range, and a budget that plans."""
    name = next(field for field, env_var in ENV_VARS.items() if env_var == var)
    try:
        config = Config.from_env({var: raw})
    except ConfigError as exc:
        error = str(exc)
    else:
        error = ""
    event("rejected" if error else "accepted")
    if error:
        assert f"{var}={raw!r}" in error
        return
    value = getattr(config, name)
    if raw.strip():
        assert isinstance(value, TYPES.get(name, (float, type(None))))
    if isinstance(value, float):
        assert 0 <= value <= MAX_SECONDS
    budget = Budget.plan(config, start=0.0)
    assert 0 <= budget.drain_end <= budget.exit_at < config.stop_timeout


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set process environment variables for a block (``graceful config`` reads os.environ)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@settings(max_examples=40, deadline=None)
@given(var=st.sampled_from(sorted(ENV_VARS.values())), raw=ENV_VALUES)
def test_graceful_config_prints_or_explains_in_one_line(var: str, raw: str) -> None:
    assume("\x00" not in raw)  # a process environment cannot hold NUL (execve stops there)
    out, err = io.StringIO(), io.StringIO()
    with (
        environment(**{var: raw}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(["config", "--json"])
    if code == 0:
        assert json.loads(out.getvalue())["settings"]
    else:
        assert code == 1
        assert err.getvalue().count("\n") == 1
        assert f"{var}={raw!r}" in err.getvalue()


@pytest.mark.parametrize(
    "env",
    [
        {"GRACEFUL_HOOK_TIMEOUT": "0"},
        {"GRACEFUL_MARGIN": "20"},
        {"GRACEFUL_SIGNALS": "CHLD"},
        {"ADMIN_PORT": "off", "GRACEFUL_LOOP": "trio"},
        {"GRACEFUL_STOP_TIMEOUT": "1e400"},
    ],
)
def test_graceful_config_command_explains_without_a_traceback(env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "graceful", "config"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert any(var in proc.stderr for var in env), proc.stderr


@pytest.mark.parametrize("raw", ["0.009", "1e-10"])
def test_a_stop_timeout_too_short_to_split_is_a_clear_error(raw: str) -> None:
    """Below 10 ms the margin would put the exit before the signal (a hypothesis find)."""
    with pytest.raises(ConfigError, match=f"GRACEFUL_STOP_TIMEOUT='{raw}' is under 0.01 s"):
        Config.from_env({"GRACEFUL_STOP_TIMEOUT": raw})
    budget = Budget.plan(Config(stop_timeout=0.01), start=0.0)
    assert 0 <= budget.drain_end <= budget.exit_at < 0.01


def test_graceful_config_shows_the_derived_margin_and_reserve() -> None:
    """1. ``graceful config`` with only GRACEFUL_STOP_TIMEOUT=5; 2. again with a margin set.

    Result: the margin (0.5 s) and reserve (1 s) the runtime will use, marked as derived; a
    margin that was set is shown as set (the old output printed None for both).
    """
    out = io.StringIO()
    with environment(GRACEFUL_STOP_TIMEOUT="5"), contextlib.redirect_stdout(out):
        assert cli.main(["config"]) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}
    assert lines["GRACEFUL_MARGIN"].split()[1:] == [
        "0.5",
        "(derived",
        "from",
        "GRACEFUL_STOP_TIMEOUT)",
    ]
    assert lines["GRACEFUL_RESERVE"].split()[1:3] == ["1.0", "(derived"]
    assert "None" not in lines["GRACEFUL_MARGIN"] + lines["GRACEFUL_RESERVE"]

    out = io.StringIO()
    with (
        environment(GRACEFUL_STOP_TIMEOUT="5", GRACEFUL_MARGIN="0.2"),
        contextlib.redirect_stdout(out),
    ):
        assert cli.main(["config", "--json"]) == 0
    shown = json.loads(out.getvalue())
    assert shown["settings"]["margin"] == 0.2
    assert shown["settings"]["reserve"] == 1.0
    assert shown["derived"] == ["reserve"]


def test_graceful_config_shows_a_shortened_delay() -> None:
    out = io.StringIO()
    with (
        environment(GRACEFUL_STOP_TIMEOUT="3", GRACEFUL_DELAY="5"),
        contextlib.redirect_stdout(out),
    ):
        assert cli.main(["config", "--json"]) == 0
    plan = json.loads(out.getvalue())["plan"]
    assert plan["delay_asked_s"] == 5.0
    assert plan["delay_until_s"] < plan["drain_until_s"]


def test_graceful_config_plans_the_stop_of_workers_as_they_carry_it_out() -> None:
    """``graceful config --workers 2`` prints the plan a real ``graceful serve --workers 2``
    logs at its stop: the supervisor's deadlines, and the workers' drain, cancel and exit.

    Control: the single-process plan (what the old command printed for any WEB_CONCURRENCY)
    drains longer than the workers may, so it misstated when a worker's requests are cut."""
    out = io.StringIO()
    with environment(GRACEFUL_STOP_TIMEOUT="5"), contextlib.redirect_stdout(out):
        assert cli.main(["config", "--json", "--workers", "2"]) == 0
    shown = json.loads(out.getvalue())
    assert shown["workers"] == 2
    plan = shown["plan"]

    env = {"GRACEFUL_STOP_TIMEOUT": "5", "PORT": "0", "WEB_CONCURRENCY": "2"}
    argv = [sys.executable, "-m", "graceful", "serve", "workers_app:app", "--app-dir", str(APPS)]
    with ServiceProcess(argv, env=env) as service:
        service.wait_count("worker.ready", 2)
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
    started = [e for e in service.events() if e.get("event") == "shutdown.started"]
    supervisor = next(e["plan"] for e in started if "worker" not in e)
    workers = [e["plan"] for e in started if "worker" in e]
    assert len(workers) == 2
    assert supervisor["workers_exit_by_s"] == plan["workers_exit_by_s"]
    assert supervisor["kill_at_s"] == plan["workers_killed_at_s"]
    assert supervisor["exit_by_s"] == plan["exit_by_s"]
    for worker in workers:  # counted from when the worker got the stop: a hair later
        for key in ("drain_until_s", "cancel_until_s", "exit_by_s"):
            key_shown = "workers_exit_by_s" if key == "exit_by_s" else key
            assert plan[key_shown] - 0.25 <= worker[key] <= plan[key_shown] + 0.001

    single = io.StringIO()
    with environment(GRACEFUL_STOP_TIMEOUT="5"), contextlib.redirect_stdout(single):
        assert cli.main(["config", "--json", "--workers", "1"]) == 0
    control = json.loads(single.getvalue())["plan"]
    assert control["drain_until_s"] > workers[0]["drain_until_s"] + 0.25


@pytest.mark.parametrize("command", ["serve", "run", "config"])
def test_a_mistyped_option_points_to_the_commands_own_help(command: str) -> None:
    """``graceful serve app:app --wokers 2`` names ``graceful serve --help``, whose text lists
    serve's options (was: ``graceful --help``, which does not)."""
    argv = [command, *(["app:app"] if command != "config" else []), "--wokers", "2"]
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(err):
        cli.main(argv)
    assert exited.value.code == 1
    (line,) = err.getvalue().splitlines()
    assert line == (
        f"graceful {command}: error: unrecognized arguments: --wokers 2 "
        f"(see graceful {command} --help)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "app:app", "--port", "abc"],
        ["serve", "app:app", "--workers", "two"],
        ["run", "app:main", "--stop-timeout", "x"],
        ["config", "--workers", "x"],
        ["nonsense"],
    ],
)
def test_a_bad_option_is_an_invalid_setting_exit_1(argv: list[str]) -> None:
    """``--port abc`` exits 1 like ``PORT=abc`` (the README's table: a setting is invalid);
    argparse's own exit code was 2. Control: ``graceful harness`` keeps 2, its code for
    "could not run" (a CI tells that apart from a failed verdict)."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(err):
        cli.main(argv)
    assert exited.value.code == 1
    (line,) = err.getvalue().splitlines()  # one line, no usage block (was 15 lines)
    assert "error: " in line
    assert line.endswith("--help)")
    with pytest.raises(SystemExit) as harness, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["harness", "run", "--stop-timeout", "x"])
    assert harness.value.code == 2


@pytest.mark.parametrize("stop_timeout", ["0.2", "0.1"])
def test_a_short_stop_timeout_leaves_the_drain_time_and_an_idle_stop_exits_0(
    stop_timeout: str,
) -> None:
    """An idle ``graceful serve`` with a stop timeout under half a second: exit 0, with a
    drain window in the plan and no ``budget.does_not_fit``. Old code: the derived reserve's
    0.2 s floor took the whole budget (drain_until_s 0), the drain could not finish, exit 3.

    Control: the same budget with the reserve set to that old floor still does not fit."""
    env = {"GRACEFUL_STOP_TIMEOUT": stop_timeout, "PORT": "0"}
    argv = [sys.executable, "-m", "graceful", "serve", "serve_starlette:app"]
    with ServiceProcess(argv, env=env, cwd=APPS) as service:
        service.wait_event("service.ready")
        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
    plan = next(e["plan"] for e in service.events() if e.get("event") == "shutdown.started")
    assert plan["drain_until_s"] > 0
    assert "budget.does_not_fit" not in service.event_names()
    old = Config(stop_timeout=float(stop_timeout), reserve=0.2)
    assert old.fit_warnings(), "the old derived reserve would have fit"


def test_config_piped_into_head_ends_without_a_traceback() -> None:
    """``graceful config | head -1``: the reader is gone before the output is written.
    Python's default is a ``BrokenPipeError`` traceback on stderr (the control: a plain
    script writing to the same closed pipe); the command ends quietly with exit 1."""
    env = {**os.environ, "WEB_CONCURRENCY": "4"}
    whole = subprocess.run(
        [sys.executable, "-m", "graceful", "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert whole.returncode == 0
    assert whole.stderr == ""
    assert "GRACEFUL_WORKER_START        'fork'" in whole.stdout

    def into_a_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader left
        try:
            return subprocess.run(
                argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=30
            )
        finally:
            os.close(write_end)

    control = into_a_closed_pipe([sys.executable, "-c", "print('x' * 100)"])
    assert "BrokenPipeError" in control.stderr
    piped = into_a_closed_pipe([sys.executable, "-m", "graceful", "config"])
    assert piped.returncode == 1
    assert piped.stderr == ""


def test_a_misspelled_setting_is_named_at_startup_with_the_closest_one(tmp_path: Path) -> None:
    """``GRACEFUL_STOP_TIMOUT=2`` planned a 10 s budget and said nothing (found by attack).
    Now the service starts as before and says, in a warning, which variable it ignored and
    what was probably meant. Control: the right name, no warning."""
    (tmp_path / "quick.py").write_text(
        "async def main(runtime):\n    runtime.mark_ready()\n    runtime.request_stop('done')\n"
    )

    def run(env: dict[str, str]) -> list[dict[str, object]]:
        done = subprocess.run(
            [sys.executable, "-m", "graceful", "run", "quick:main"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path), "GRACEFUL_LOG_FORMAT": "json", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    lines = run({"GRACEFUL_STOP_TIMOUT": "2", "GRACEFUL_MY_APP_SETTING": "x"})
    unknown = {e["name"]: e for e in lines if e["event"] == "config.unknown_variable"}
    assert unknown["GRACEFUL_STOP_TIMOUT"]["did_you_mean"] == "GRACEFUL_STOP_TIMEOUT"
    assert unknown["GRACEFUL_MY_APP_SETTING"]["did_you_mean"] is None
    control = run({"GRACEFUL_STOP_TIMEOUT": "2"})
    assert not [e for e in control if e["event"] == "config.unknown_variable"]


def test_every_documented_variable_is_known() -> None:
    """Each ``GRACEFUL_*`` name the README and docs mention is one graceful reads: none of
    them would be reported as unknown."""
    from graceful.startup import unknown_variables

    root = Path(__file__).resolve().parent.parent
    text = " ".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    names = set(re.findall(r"\bGRACEFUL_[A-Z_]*[A-Z]\b", text))
    names.discard("GRACEFUL_STOP_TIMOUT")  # the README's example of a typo
    assert names
    assert unknown_variables(dict.fromkeys(names, "x")) == {}

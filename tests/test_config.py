"""Configuration: precedence, validation, and budget arithmetic."""

from __future__ import annotations

import pytest

from graceful import Config, ConfigError
from graceful.budget import Budget


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


def test_budget_splits_the_stop_timeout() -> None:
    budget = Budget.plan(Config(stop_timeout=10, delay=2), start=100.0)
    assert budget.exit_at == pytest.approx(109.0)  # 1 s margin
    assert budget.delay_end == pytest.approx(102.0)
    assert budget.drain_end == pytest.approx(107.0)  # 2 s reserve for cancel, flush, close
    assert budget.drain_end < budget.cancel_end <= budget.exit_at
    assert budget.share(4.5) == pytest.approx(0.5)


def test_budget_reserve_survives_a_delay_longer_than_the_timeout() -> None:
    budget = Budget.plan(Config(stop_timeout=3, delay=60), start=0.0)
    assert budget.delay_end == budget.drain_end
    assert budget.exit_at - budget.drain_end == pytest.approx(
        Config(stop_timeout=3).effective_reserve
    )


def test_drain_timeout_caps_the_drain() -> None:
    budget = Budget.plan(Config(stop_timeout=30, delay=1, drain_timeout=4), start=0.0)
    assert budget.drain_end == pytest.approx(5.0)


def test_second_signal_moves_the_drain_deadline_to_now() -> None:
    budget = Budget.plan(Config(stop_timeout=10), start=0.0)
    skipped = budget.skip_to_flush(now=1.0)
    assert skipped.drain_end == 1.0
    assert skipped.exit_at == budget.exit_at
    assert 1.0 <= skipped.cancel_end <= 1.5

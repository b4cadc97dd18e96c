"""``graceful.budget.Budget``: one stop timeout split into absolute phase deadlines."""

from __future__ import annotations

import itertools
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from graceful.budget import Budget
from graceful.config import Config
from graceful.exceptions import ConfigError
from graceful.status import ExitCode
from tests.support import APPS, ServiceProcess, free_port


def test_budget_splits_the_stop_timeout() -> None:
    budget = Budget.plan(Config(stop_timeout=10, delay=2), start=100.0)
    assert budget.start == 100.0
    assert budget.exit_at == pytest.approx(109.0)  # 1 s margin
    assert budget.delay_end == pytest.approx(102.0)
    assert budget.drain_end == pytest.approx(107.0)  # 2 s reserve for cancel, flush and close
    assert budget.cancel_end == pytest.approx(107.5)  # the cancel grace: at most 0.5 s
    assert budget.share(4.5) == pytest.approx(0.5)


def test_budget_reserve_survives_a_delay_longer_than_the_timeout() -> None:
    budget = Budget.plan(Config(stop_timeout=3, delay=60), start=0.0)
    assert budget.exit_at - budget.drain_end == pytest.approx(
        Config(stop_timeout=3).effective_reserve
    )


def test_a_long_delay_leaves_stop_accept_and_drain_their_time() -> None:
    """stop 3 s, delay 5 s: the drain must end by 2.1 s (margin 0.3, reserve 0.6).

    Result: the delay ends a quarter of those 2.1 s earlier (the old plan ended it at 2.1 s,
    with the drain deadline: stop_accept and the drain got nothing).
    """
    budget = Budget.plan(Config(stop_timeout=3, delay=5), start=0.0)
    assert budget.drain_end == pytest.approx(2.1)
    assert budget.delay_end == pytest.approx(2.1 * 0.75)
    # Control: a delay that fits is left as asked.
    assert Budget.plan(Config(stop_timeout=3, delay=1), start=0.0).delay_end == 1.0


def test_the_time_kept_after_a_delay_is_at_most_a_second() -> None:
    budget = Budget.plan(Config(stop_timeout=60, delay=120), start=0.0)
    assert budget.drain_end - budget.delay_end == pytest.approx(1.0)


@pytest.mark.parametrize("server", ["asgi_service", "aiohttp_service"])
def test_a_delay_longer_than_the_budget_still_stops_cleanly(server: str, tmp_path: Path) -> None:
    """1. a real service with GRACEFUL_STOP_TIMEOUT=3, GRACEFUL_DELAY=5; 2. SIGTERM.

    Result: the delay is shortened (logged with asked and used), the listeners close, the
    drain ends, exit 0. Before, the delay ran to the drain deadline: exit 3 (drain cut), or 4
    when ``stop_accept`` was cut too.
    """
    env = {
        "PORT": str(free_port()),
        "ADMIN_PORT": str(free_port()),
        "STATE_PATH": str(tmp_path / "state.sqlite"),
        "GRACEFUL_STOP_TIMEOUT": "3",
        "GRACEFUL_DELAY": "5",
    }
    argv = [sys.executable, "-u", str(APPS / "drain_app.py"), server]
    with ServiceProcess(argv, env=env) as service:
        service.wait_for("APP serving")
        service.signal(signal.SIGTERM)
        code = service.wait()
        shortened = [e for e in service.events() if e.get("event") == "budget.delay_shortened"]
        report = service.wait_event("shutdown.report")
    assert code == ExitCode.OK, service.output()
    assert len(shortened) == 1, service.output()
    assert shortened[0]["delay_asked_s"] == 5.0
    assert 0 < shortened[0]["delay_used_s"] < 2.1
    assert report["drained"] is True
    assert report["hooks"]["failed"] == report["hooks"]["timed_out"] == 0


def test_drain_timeout_caps_the_drain() -> None:
    budget = Budget.plan(Config(stop_timeout=30, delay=1, drain_timeout=4), start=0.0)
    assert budget.drain_end == pytest.approx(5.0)
    # Control: without the cap the drain runs until the reserve.
    uncapped = Budget.plan(Config(stop_timeout=30, delay=1), start=0.0)
    assert uncapped.drain_end == pytest.approx(30 - 1 - 3)


def test_cancel_grace_is_a_quarter_of_a_small_reserve() -> None:
    budget = Budget.plan(Config(stop_timeout=10, reserve=1.0), start=0.0)
    assert budget.cancel_end - budget.drain_end == pytest.approx(0.25)


def test_second_signal_moves_the_drain_deadline_to_now() -> None:
    budget = Budget.plan(Config(stop_timeout=10), start=0.0)
    skipped = budget.skip_to_flush(now=1.0)
    assert skipped.drain_end == 1.0
    assert skipped.exit_at == budget.exit_at
    assert skipped.cancel_end == pytest.approx(1.5)
    assert skipped.start == budget.start


def test_second_signal_during_the_delay_ends_the_delay() -> None:
    budget = Budget.plan(Config(stop_timeout=10, delay=3), start=0.0)
    assert budget.skip_to_flush(now=1.0).delay_end == 1.0


def test_second_signal_past_the_exit_deadline_leaves_no_cancel_grace() -> None:
    budget = Budget.plan(Config(stop_timeout=10), start=0.0)
    late = budget.skip_to_flush(now=budget.exit_at + 1)
    assert late.cancel_end == late.drain_end


def test_share_of_an_empty_budget_is_zero() -> None:
    assert Budget(5.0, 5.0, 5.0, 5.0, 5.0).share(1.0) == 0.0
    assert Budget(0.0, 0.0, 6.0, 6.5, 9.0).share(1.0) == 0.111  # rounded to 3 places


SECONDS = st.floats(min_value=0, max_value=120, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    stop_timeout=st.floats(min_value=0.1, max_value=600),
    delay=SECONDS,
    drain_timeout=st.none() | st.floats(min_value=0.01, max_value=120),
    margin=st.none() | SECONDS,
    reserve=st.none() | SECONDS,
    start=st.floats(min_value=0, max_value=1e6),
    signal_at=st.floats(min_value=0, max_value=1.2),
)
def test_deadlines_are_ordered_and_never_pass_the_exit(
    stop_timeout: float,
    delay: float,
    drain_timeout: float | None,
    margin: float | None,
    reserve: float | None,
    start: float,
    signal_at: float,
) -> None:
    """Whatever the settings: start <= delay_end <= drain_end <= cancel_end <= exit_at, the
    reserve is kept after the drain, and a second signal keeps that order and the exit."""
    try:
        config = Config(
            stop_timeout=stop_timeout,
            delay=delay,
            drain_timeout=drain_timeout,
            margin=margin,
            reserve=reserve,
        )
    except ConfigError:
        reject()
    budget = Budget.plan(config, start=start)
    exit_at = start + stop_timeout - config.effective_margin
    assert budget.exit_at == pytest.approx(exit_at)
    assert ordered(budget.start, budget.delay_end, budget.drain_end, budget.cancel_end, exit_at)
    assert ordered(
        min(config.effective_reserve, exit_at - start), budget.exit_at - budget.drain_end
    )
    assert ordered(budget.cancel_end - budget.drain_end, 0.5)
    # The delay leaves stop_accept and the drain a quarter of their window, up to 1 s.
    last_drain = budget.exit_at - min(config.effective_reserve, exit_at - start)
    window = last_drain - start
    kept = last_drain - budget.delay_end
    assert budget.delay_end - start == pytest.approx(delay) or ordered(
        min(1.0, window / 4) - kept, 1e-6 * max(1.0, start)
    )

    now = start + signal_at * (budget.exit_at - start)  # up to 20 % past the exit deadline
    skipped = budget.skip_to_flush(now)
    assert skipped.exit_at == budget.exit_at
    assert skipped.drain_end == now
    assert ordered(skipped.delay_end, skipped.drain_end, skipped.cancel_end, max(exit_at, now))
    assert ordered(skipped.cancel_end - now, budget.cancel_end - budget.drain_end)


def ordered(*values: float) -> bool:
    """``values`` are non-decreasing, give or take float rounding (loop times are ~1e5 s)."""
    return all(a <= b + 1e-9 * max(1.0, abs(b)) for a, b in itertools.pairwise(values))

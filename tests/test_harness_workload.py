"""graceful.harness.workload: the contract as the user describes it (templates, ports, paths)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.harness.workload import Workload, parse_admin_port


def test_the_default_work_url_asks_for_milliseconds() -> None:
    w = Workload()
    assert w.work_target(0) == "/work?ms=0"
    assert w.work_target(1500) == "/work?ms=1500"
    assert (w.long_ms(1200), w.short_ms(20)) == (1200, 20)
    assert not w.in_seconds


def test_a_seconds_template_asks_for_whole_seconds() -> None:
    """An endpoint like FastAPI's ``s: int`` gets whole seconds: long requests are rounded to
    the nearest second (at least 1), short ones become 0."""
    w = Workload(work_url="/slow?s={seconds}")
    assert w.in_seconds
    assert w.work_target(w.long_ms(15000)) == "/slow?s=15"
    assert w.work_target(w.long_ms(1200)) == "/slow?s=1"
    assert w.work_target(w.long_ms(300)) == "/slow?s=1"
    assert w.work_target(w.short_ms(20)) == "/slow?s=0"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=10**7))
def test_seconds_round_trip(ms: int) -> None:
    w = Workload(work_url="/slow?s={seconds}&x=1")
    asked = w.long_ms(ms)
    assert asked % 1000 == 0
    assert asked >= 1000
    assert abs(asked - ms) <= max(500, 1000 - ms)
    assert w.work_target(asked) == f"/slow?s={asked // 1000}&x=1"


@pytest.mark.parametrize("url", ["/work", "/work?ms={msec}", "work?ms={ms}", "/w?a={ms}&b={x}"])
def test_a_work_url_must_hold_a_duration_field(url: str) -> None:
    with pytest.raises(ValueError, match=r"\{ms\} or \{seconds\}|must start with /"):
        Workload(work_url=url)


def test_admin_port_off_and_zero() -> None:
    """One meaning of 0 across runtime and harness: a random port (which the harness cannot
    publish, so it refuses it); ``off`` is none."""
    assert parse_admin_port("9090") == 9090
    assert parse_admin_port("off") is None
    assert parse_admin_port("None") is None
    with pytest.raises(ValueError, match="random"):
        parse_admin_port("0")
    with pytest.raises(ValueError, match="random"):
        Workload(admin_port=0)
    with pytest.raises(ValueError, match="not a port"):
        parse_admin_port("admin")


def test_where_readiness_is_polled() -> None:
    assert Workload().ready_on == "admin"
    assert Workload().has_admin
    assert Workload().ready_target == "/readyz"
    # No admin port, no ready path given: graceful's /readyz is not looked for on the main
    # port (where an app that has no admin port has no /readyz either).
    assert Workload(admin_port=None).ready_on == "work"
    assert Workload(admin_port=None).ready_target == "/work?ms=0"
    no_admin = Workload(admin_port=None, ready_path="/health")
    assert (no_admin.ready_on, no_admin.has_admin) == ("main", False)
    assert Workload(ready_path="/health", ready_port="main").ready_on == "main"
    nothing = Workload(admin_port=None, ready_path="", work_url="/slow?s={seconds}")
    assert nothing.ready_on == "work"
    assert nothing.ready_target == "/slow?s=0"  # not a 2 s default of the endpoint
    with pytest.raises(ValueError, match="no admin port"):
        Workload(admin_port=None, ready_port="admin")

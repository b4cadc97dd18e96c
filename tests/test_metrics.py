"""``graceful.metrics.Metrics``: every metric's name and labels, in a fresh registry per test."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from graceful.metrics import Metrics
from graceful.status import LifecycleState
from tests.support import ROOT

#: name as exposed -> label names; the README's "Metrics:" list says the same.
METRICS: dict[str, tuple[str, ...]] = {
    "graceful_state": (),
    "graceful_signals_received_total": ("signal",),
    "graceful_shutdown_phase_seconds": ("phase",),
    "graceful_hooks_failed_total": ("phase", "outcome"),
    "graceful_shutdown_overruns_total": (),
    "graceful_inflight_requests": ("server",),
    "graceful_open_connections": ("server",),
    "graceful_work_cancelled_total": (),
    "graceful_flushed_items_total": (),
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_each_metric_has_its_name_and_labels(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    assert m.registry is registry
    m.signals.labels(signal="SIGTERM").inc()
    m.phase_seconds.labels(phase="drain").set(1.5)
    m.hooks_failed.labels(phase="flush", outcome="timed_out").inc()
    m.overruns.inc()
    m.inflight.labels(server="asgi").set(3)
    m.connections.labels(server="asgi").set(4)
    m.cancelled.inc(2)
    m.flushed_items.inc(5)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("graceful_state", graceful_state="starting") == 1
    assert value("graceful_signals_received_total", signal="SIGTERM") == 1
    assert value("graceful_shutdown_phase_seconds", phase="drain") == 1.5
    assert value("graceful_hooks_failed_total", phase="flush", outcome="timed_out") == 1
    assert value("graceful_shutdown_overruns_total") == 1
    assert value("graceful_inflight_requests", server="asgi") == 3
    assert value("graceful_open_connections", server="asgi") == 4
    assert value("graceful_work_cancelled_total") == 2
    assert value("graceful_flushed_items_total") == 5


def test_registry_holds_these_metrics_and_no_others(registry: CollectorRegistry) -> None:
    Metrics(registry)
    exposed = set()
    for family in registry.collect():
        # A counter's family is named without "_total"; its samples carry it.
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
    assert exposed == set(METRICS)


def test_wrong_label_names_are_refused(registry: CollectorRegistry) -> None:
    """Control for the label checks above: prometheus-client does reject unknown labels."""
    m = Metrics(registry)
    with pytest.raises(ValueError, match="label"):
        m.signals.labels(sig="SIGTERM")
    with pytest.raises(ValueError, match="label"):
        m.hooks_failed.labels(phase="flush")


def test_state_starts_at_starting_and_takes_every_lifecycle_state(
    registry: CollectorRegistry,
) -> None:
    m = Metrics(registry)
    for state in LifecycleState:
        m.state.state(state.value)
        assert registry.get_sample_value("graceful_state", {"graceful_state": state.value}) == 1
    with pytest.raises(ValueError, match="stuck"):  # control: a state it does not know
        m.state.state("stuck")


def test_two_bundles_need_two_registries(registry: CollectorRegistry) -> None:
    """Why every test takes a fresh registry: one registry refuses the same names twice."""
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)
    Metrics(CollectorRegistry())


def test_readme_lists_every_metric_with_its_labels() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Metrics: `graceful_state`") :].split("\n\n", 1)[0]
    listed = {
        name: tuple(labels.split(",")) if labels else ()
        for name, labels in re.findall(r"`(graceful_\w+)(?:\{([\w,]+)\})?`", paragraph)
    }
    assert listed == METRICS

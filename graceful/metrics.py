"""Prometheus metrics of the lifecycle, the stop and the work in flight."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Enum, Gauge

from graceful.hooks import Outcome, Phase

__all__ = ["Metrics"]


class Metrics:
    """Every metric graceful exports, registered in one registry.

    Under prometheus-client's multiprocess mode (the workers of ``graceful serve --workers``),
    the gauges add up across live processes (in-flight work, connections) or are kept per live
    process (phase durations), and a process's share goes when it exits.

    Args:
        registry: where to register; tests pass a fresh ``CollectorRegistry``.

    .. versionadded:: 0.1
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.state = Enum(
            "graceful_state",
            "Lifecycle state of the service.",
            states=["starting", "serving", "stopping", "stopped"],
            registry=registry,
        )
        self.signals = Counter(
            "graceful_signals_received_total",
            "Stop signals received, by signal name.",
            ["signal"],
            registry=registry,
        )
        self.phase_seconds = Gauge(
            "graceful_shutdown_phase_seconds",
            "Duration of each phase of the last shutdown.",
            ["phase"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.hooks_failed = Counter(
            "graceful_hooks_failed_total",
            "Shutdown hooks that raised or were cut at their deadline.",
            ["phase", "outcome"],
            registry=registry,
        )
        self.overruns = Counter(
            "graceful_shutdown_overruns_total",
            "Stops whose work did not fit the budget and had to be cut.",
            registry=registry,
        )
        self.inflight = Gauge(
            "graceful_inflight_requests",
            "Units of work (requests, messages, jobs) in flight.",
            ["server"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Gauge(
            "graceful_open_connections",
            "Open client connections.",
            ["server"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cancelled = Counter(
            "graceful_work_cancelled_total",
            "Units of work and tasks cancelled at the drain deadline.",
            registry=registry,
        )
        self.flushed_items = Counter(
            "graceful_flushed_items_total",
            "Items written to durable state by flushes.",
            registry=registry,
        )
        self.state.state("starting")
        # Every label the stop writes, created now: under multiprocess mode the first value of
        # a kind of metric opens a file, and at the stop the process may be at its descriptor
        # limit (EMFILE there ended workers with requests in flight). A phase reads 0 until a
        # stop has measured it.
        for phase in Phase:
            self.phase_seconds.labels(str(phase))
            for outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
                self.hooks_failed.labels(str(phase), str(outcome))

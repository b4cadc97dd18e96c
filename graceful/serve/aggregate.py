"""The container's ``/metrics``: every worker's metrics added up, and the supervisor's own.

Workers run prometheus-client in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set in
their environment, so every metric they create writes its samples to a file there, and the
supervisor's registry reads them all with a ``MultiProcessCollector`` (counters and histograms
summed, gauges by their ``multiprocess_mode``). The directory is the user's
``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of old files at start), else a fresh temporary
one removed at exit. When a worker exits, its live gauges are dropped (``mark_process_dead``);
its counters stay, so totals never go down.

The supervisor's own metrics come from a collector that reads its state at scrape time, with
names no worker writes (a worker's ``graceful_state`` is an Enum, which multiprocess mode does
not export), so no family appears twice.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from graceful.status import LifecycleState

__all__ = [
    "ENV_VAR",
    "MetricsDirectory",
    "SupervisorStats",
    "WorkerSamples",
    "container_registry",
]

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class MetricsDirectory:
    """Where the workers write their metrics.

    Attributes:
        path: the directory.
        owned: created here (and removed at exit), not the user's.
        instead_of: the user's ``PROMETHEUS_MULTIPROC_DIR`` when it could not be used (not
            creatable, old samples that cannot be removed) and ``path`` replaces it.
        why: what was wrong with it.
    """

    path: str
    owned: bool
    instead_of: str | None = None
    why: str | None = None

    @classmethod
    def prepare(cls, environ: Mapping[str, str]) -> MetricsDirectory:
        """The user's directory emptied of old samples, or a new temporary one.

        A user's directory that cannot be used is replaced by a temporary one (said in
        ``instead_of`` and ``why``): the workers must not be handed a directory their
        prometheus-client cannot write to (every metric they create would raise, and no
        worker would start), nor old samples be added to the new ones.

        Raises:
            OSError: not even a temporary directory can be created.
        """
        path = environ.get(ENV_VAR, "").strip()
        if path:
            try:
                _empty(path)
            except OSError as exc:
                why = f"{exc.strerror or exc}: {exc.filename or path}"
                return cls(_temporary(), owned=True, instead_of=path, why=why)
            return cls(path, owned=False)
        return cls(_temporary(), owned=True)

    def inflight_of(self, pid: int) -> int:
        """The requests a worker had in flight when it last wrote its gauge (every 0.1 s).

        Read before :meth:`process_dead` removes its live gauges.
        """
        total = 0.0
        path = os.path.join(self.path, f"gauge_livesum_{pid}.db")
        with contextlib.suppress(Exception):  # none written yet, or cut short by a kill
            for key, value, *_ in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                if json.loads(key)[0] == "graceful_inflight_requests":
                    total += value
        return int(total)

    def process_dead(self, pid: int) -> list[str]:
        """Drop an exited worker's live gauges, and any file of its that cannot be read.

        A worker killed while prometheus-client created a file (between its creation and
        its first write: SIGKILL, the OOM killer) leaves it empty or cut short, and one such
        file fails every scrape of ``/metrics`` from then on (the collector reads them all).
        Its counters are kept otherwise: totals never go down.

        Returns:
            The unreadable files removed.
        """
        with contextlib.suppress(OSError):
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        removed = []
        for path in glob.glob(os.path.join(glob.escape(self.path), f"*_{pid}.db")):
            try:
                list(MmapedDict.read_all_values_from_file(path))  # type: ignore[no-untyped-call]
            except Exception:  # whatever a cut-short file makes the reader raise
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append(path)
        return removed

    def remove(self) -> None:
        """Remove the directory if it was created here."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def _temporary() -> str:
    return tempfile.mkdtemp(prefix="graceful-metrics-")


def _empty(path: str) -> None:
    """Create ``path`` if needed and remove the samples of an earlier run from it.

    Raises:
        OSError: it cannot be created, or holds a ``*.db`` that cannot be removed (read-only,
            or a directory, which the collector would fail to read on every scrape).
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(path), "*.db")):
        if os.path.isdir(stale) and not os.path.islink(stale):
            raise IsADirectoryError(errno.EISDIR, "a directory named like a sample file", stale)
        os.remove(stale)
    with tempfile.TemporaryFile(dir=path):  # the workers must be able to write there
        pass


@dataclass(slots=True)
class SupervisorStats:
    """What the supervisor counts, read by its collector at scrape time."""

    state: LifecycleState = LifecycleState.STARTING
    ready: int = 0
    starting: int = 0
    restarts: int = 0
    signals: Counter[str] = field(default_factory=Counter)
    #: Requests in flight in workers that died while serving (a crash, SIGKILL, the OOM killer).
    requests_lost: int = 0


class _SupervisorCollector(Collector):
    def __init__(self, stats: SupervisorStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        state = GaugeMetricFamily(
            "graceful_state", "Lifecycle state of the service.", labels=["graceful_state"]
        )
        for value in LifecycleState:
            state.add_metric([str(value)], 1.0 if stats.state is value else 0.0)
        yield state
        workers = GaugeMetricFamily(
            "graceful_workers", "Worker processes, by state.", labels=["state"]
        )
        workers.add_metric(["ready"], stats.ready)
        workers.add_metric(["starting"], stats.starting)
        yield workers
        yield CounterMetricFamily(
            "graceful_worker_requests_lost",
            "Requests in flight in workers that died while serving (as last reported): cut.",
            value=stats.requests_lost,
        )
        yield CounterMetricFamily(
            "graceful_worker_restarts",
            "Workers started to replace one that exited while serving.",
            value=stats.restarts,
        )
        signals = CounterMetricFamily(
            "graceful_supervisor_signals_received",
            "Stop signals the supervisor received, by signal name.",
            labels=["signal"],
        )
        for name, count in sorted(stats.signals.items()):
            signals.add_metric([name], count)
        yield signals


class WorkerSamples(MultiProcessCollector):
    """prometheus-client's multiprocess collector, that a file caught half-written leaves
    answering: a worker creating a metric file (a replacement, a new label) made about one
    scrape in 400 fail with 500 under churn (found by attack). Such a file is left out of
    that scrape; the next one reads it whole."""

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(glob.escape(self._path), "*.db"))
        try:
            merged: Iterable[Metric] = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        except Exception:  # whatever a file cut short makes the reader raise
            readable = [f for f in files if _readable(f)]
            merged = self.merge(readable, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def _readable(path: str) -> bool:
    try:
        list(MmapedDict.read_all_values_from_file(path))  # type: ignore[no-untyped-call]
    except Exception:
        return False
    return True


def container_registry(
    directory: MetricsDirectory | None, stats: SupervisorStats
) -> CollectorRegistry:
    """The registry the supervisor's admin server exposes.

    Args:
        directory: the workers' samples (``None``: they could not be collected).
        stats: the supervisor's own counts.
    """
    registry = CollectorRegistry()
    if directory is not None:
        WorkerSamples(registry, path=directory.path)  # type: ignore[no-untyped-call]
    registry.register(_SupervisorCollector(stats))
    return registry

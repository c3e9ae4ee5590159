"""Prometheus metrics for one controller: one CollectorRegistry each (no global registry), so a
test or a notebook can run many controllers side by side.

The hot path makes no prometheus call: the controller bumps plain counters (core.controller.Counters)
and a custom collector turns a copy of them into metric families at scrape time. The one exception is
the WAL fsync histogram, observed once per group commit by the WAL's `on_sync` hook. The seed's names
are kept: queue_jobs_{dispatched,completed,retried,dead,timeout}_total, queue_job_duration_seconds
(buckets 0.1 0.5 1 2 5), queue_recovery_time_seconds and queue_depth."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from beaver_sim.core.controller import DURATION_BUCKETS, Controller, Counters
from beaver_sim.core.types import BeaverError, JobStatus

if TYPE_CHECKING:
    from beaver_sim.runtime.clock import TimerLateness

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class Sample:
    """A consistent copy of what the metrics show, taken on the controller's thread."""

    counters: Counters
    status: dict[str, int]
    recovery_seconds: float
    records_replayed: int
    stuck_workers: int = 0
    lateness: Lateness | None = None
    running_without_slot: int = 0  # timed-out thread attempts running on in spare threads
    spare_threads: int = 0  # how many may (thread executor)


@dataclass(frozen=True, slots=True)
class Lateness:
    """A copy of the real clock's timer lateness: bucket bounds and counts, sum, p99 (seconds)."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    sum: float
    p99: float


def sample(
    controller: Controller, recovery_seconds: float | None = None, lateness: TimerLateness | None = None
) -> Sample:
    """Copy the controller's counters and status (and the real clock's timer lateness, when
    given); `recovery_seconds` defaults to the storage's."""
    c = controller.counters
    report = controller.storage.report
    seconds = report.seconds if recovery_seconds is None else recovery_seconds
    late = None
    if lateness is not None:
        late = Lateness(lateness.bounds, tuple(lateness.buckets), lateness.sum, lateness.p99())
    return Sample(
        replace(c, duration_buckets=list(c.duration_buckets)),
        controller.status(),
        seconds,
        report.records_replayed,
        len(controller.stuck),
        late,
    )


class QueueCollector(Collector):
    """Builds the queue's metric families from `read()` at each scrape."""

    def __init__(self, read: Callable[[], Sample]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        s = self.read()
        c = s.counters
        for name, doc, value in (
            ("queue_jobs_enqueued_total", "Jobs accepted by enqueue in this process", c.enqueued),
            ("queue_jobs_dispatched_total", "Attempts handed to a worker", c.dispatched),
            ("queue_jobs_completed_total", "Attempts that succeeded (job completed)", c.completed),
            ("queue_jobs_failed_total", "Attempts whose handler failed", c.failed),
            ("queue_jobs_retried_total", "Failed or timed-out attempts put back in the queue", c.retried),
            ("queue_jobs_dead_total", "Jobs that used up max_retry attempts", c.dead),
            ("queue_jobs_timeout_total", "Attempts abandoned at their deadline", c.timeouts),
            (
                "queue_attempts_abandoned_total",
                "Timed-out attempts left running without a worker slot (not stoppable, or spare threads)",
                c.abandoned,
            ),
            (
                "queue_attempts_killed_total",
                "Timed-out attempts stopped by the workers (process killed, thread interrupted)",
                c.killed,
            ),
            ("queue_stale_results_total", "Results for an attempt that was no longer current", c.stale),
            (
                "queue_jobs_requeued_on_recovery_total",
                "In-flight jobs requeued at start",
                c.requeued_on_recovery,
            ),
            ("queue_snapshots_total", "Snapshots written", c.snapshots),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield HistogramMetricFamily(
            "queue_job_duration_seconds",
            "Attempt duration, dispatch to result",
            buckets=_histogram(DURATION_BUCKETS, c.duration_buckets),
            sum_value=c.duration_sum,
        )
        if s.lateness is not None:
            yield from _lateness(s.lateness)
        yield GaugeMetricFamily(
            "queue_recovery_time_seconds", "Time the last start took to recover", value=s.recovery_seconds
        )
        yield GaugeMetricFamily(
            "queue_recovery_records_replayed",
            "WAL records replayed by the last start",
            value=s.records_replayed,
        )
        yield GaugeMetricFamily(
            "queue_workers_stuck",
            "Worker slots held by a timed-out attempt that is not gone yet",
            value=s.stuck_workers,
        )
        yield GaugeMetricFamily(
            "queue_attempts_running_without_slot",
            "Timed-out attempts still running in spare threads (a thread stuck in C cannot be stopped)",
            value=s.running_without_slot,
        )
        yield GaugeMetricFamily(
            "queue_spare_threads",
            "How many timed-out attempts may run on in spare threads before they keep their slots",
            value=s.spare_threads,
        )
        yield GaugeMetricFamily(
            "queue_depth", "Jobs pending (waiting for a worker)", value=s.status["pending"]
        )
        by_state = GaugeMetricFamily("queue_jobs", "Jobs known, by state", labels=["state"])
        for state in JobStatus:
            by_state.add_metric([state.value], s.status[state.value])
        yield by_state
        yield GaugeMetricFamily(
            "queue_wal_last_seq", "Sequence number of the last WAL record", s.status["last_seq"]
        )


def _histogram(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs from per-bucket counts, the last one +Inf."""
    cumulative, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return buckets


def _lateness(late: Lateness) -> Iterator[Metric]:
    yield HistogramMetricFamily(
        "queue_timer_lateness_seconds",
        "How late the controller's timers (attempt deadlines, snapshots) fired after their deadline",
        buckets=_histogram(late.bounds, late.buckets),
        sum_value=late.sum,
    )
    yield GaugeMetricFamily(
        "queue_timer_lateness_p99_seconds",
        "99th percentile of the recent timer lateness: attempts ending this close to a deadline may "
        "end the other way than simulated (borderline)",
        value=late.p99,
    )


class QueueMetrics:
    """One controller's registry. Create it before opening storage, so the WAL can be given
    `on_sync=metrics.wal_fsync.observe`; attach the collector once the controller exists."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.wal_fsync = Histogram(
            "wal_fsync_duration_seconds",
            "Time one WAL fdatasync (one group commit) took",
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )

    def attach(self, read: Callable[[], Sample]) -> None:
        """Expose the queue's metrics, read through `read` at scrape time."""
        self.registry.register(QueueCollector(read))

    def text(self) -> str:
        """The Prometheus text exposition of every metric in this registry."""
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve /metrics on host:port in a daemon thread (port 0 picks a free one)."""
        try:
            httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise BeaverError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        return MetricsServer(httpd, thread, host)


@dataclass(slots=True)
class MetricsServer:
    """A running /metrics HTTP server."""

    httpd: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        return self.httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

"""Metrics: one registry per controller, the seed's metric names, values read from the controller's
counters at scrape time, the WAL fsync histogram fed by the WAL, and the HTTP endpoint."""

from __future__ import annotations

import itertools
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.metrics import QueueMetrics, sample
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workers import SimWorkers

SEED_NAMES = {
    "queue_jobs_dispatched_total",
    "queue_jobs_completed_total",
    "queue_jobs_retried_total",
    "queue_jobs_dead_total",
    "queue_jobs_timeout_total",
    "queue_job_duration_seconds_bucket",
    "queue_job_duration_seconds_sum",
    "queue_job_duration_seconds_count",
    "queue_recovery_time_seconds",
    "queue_depth",
}
OURS = {"queue_stale_results_total", "wal_fsync_duration_seconds_bucket", "wal_fsync_duration_seconds_count"}


def scrape(metrics: QueueMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, through prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text())
        for s in family.samples
    }


def run_controller(jobs: int = 300) -> tuple[Controller, QueueMetrics]:
    """A controller on the virtual clock with failures and timeouts, its WAL timed by a fake timer."""
    config = Config(
        data_dir="/d", worker_count=4, task_timeout=0.4, failure_rate=0.2, work_min=0.1, work_max=0.5, seed=3
    )
    metrics = QueueMetrics()
    ticks = itertools.count()
    storage = Storage.from_config(
        SimFS(), config, timer=lambda: next(ticks) * 0.001, on_sync=metrics.wal_fsync.observe
    )
    clock = VirtualClock()
    ctl = Controller(config, clock, storage, SimWorkers(clock, config.seed, 0.2, 0.1, 0.5))
    metrics.attach(lambda: sample(ctl))
    ctl.start()
    ctl.enqueue((f"j{i}", {"type": "compute"}) for i in range(jobs))
    clock.run(until=5.0)  # part of the way: some jobs still pending
    return ctl, metrics


def test_seed_names_and_values_come_from_the_counters() -> None:
    ctl, metrics = run_controller()
    got = scrape(metrics)
    names = {name for name, _ in got}
    assert names >= SEED_NAMES | OURS
    c = ctl.counters
    assert got[("queue_jobs_dispatched_total", ())] == c.dispatched > 0
    assert got[("queue_jobs_completed_total", ())] == c.completed > 0
    assert got[("queue_jobs_retried_total", ())] == c.retried > 0
    assert got[("queue_jobs_timeout_total", ())] == c.timeouts > 0
    assert got[("queue_jobs_dead_total", ())] == c.dead
    assert got[("queue_stale_results_total", ())] == c.stale
    status = ctl.status()
    assert got[("queue_depth", ())] == status["pending"] > 0
    for state in ("pending", "in_flight", "completed", "dead"):
        assert got[("queue_jobs", (("state", state),))] == status[state]


def test_duration_histogram_has_the_seed_buckets_cumulatively() -> None:
    ctl, metrics = run_controller()
    got = scrape(metrics)
    bounds = ["0.1", "0.5", "1.0", "2.0", "5.0", "+Inf"]
    counts = [got[("queue_job_duration_seconds_bucket", (("le", b),))] for b in bounds]
    assert counts == sorted(counts)  # cumulative
    c = ctl.counters
    assert counts[-1] == got[("queue_job_duration_seconds_count", ())] == sum(c.duration_buckets)
    assert counts[-1] == c.completed + c.failed  # one observation per result that counted
    assert got[("queue_job_duration_seconds_sum", ())] == c.duration_sum


def test_wal_fsync_histogram_counts_every_sync() -> None:
    ctl, metrics = run_controller()
    got = scrape(metrics)
    assert got[("wal_fsync_duration_seconds_count", ())] == ctl.storage.wal.syncs > 0


def test_scrape_reads_the_live_values_not_a_copy_from_registration() -> None:
    ctl, metrics = run_controller(jobs=50)
    before = scrape(metrics)[("queue_jobs_completed_total", ())]
    ctl.clock.run(until=60.0)
    after = scrape(metrics)[("queue_jobs_completed_total", ())]
    assert after > before and after == ctl.counters.completed


def test_registries_are_per_controller() -> None:
    a, b = QueueMetrics(), QueueMetrics()  # a global registry would refuse the second histogram
    a.wal_fsync.observe(0.001)
    assert scrape(a)[("wal_fsync_duration_seconds_count", ())] == 1
    assert scrape(b)[("wal_fsync_duration_seconds_count", ())] == 0


def test_served_over_http_on_a_free_port() -> None:
    _ctl, metrics = run_controller(jobs=20)
    server = metrics.serve("127.0.0.1", 0)
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names >= SEED_NAMES


def test_queue_jobs_counts_delayed_and_cancelled_jobs() -> None:
    ctl, metrics = run_controller(jobs=10)
    now = ctl.clock.now()
    ctl.enqueue([("later", {}, {"not_before": now + 60}), ("never", {}, {"not_before": now + 60})])
    ctl.cancel(["never"])
    got = scrape(metrics)
    assert got[("queue_jobs", (("state", "delayed"),))] == 1
    assert got[("queue_jobs", (("state", "cancelled"),))] == 1
    assert sum(v for (name, labels), v in got.items() if name == "queue_jobs") == len(ctl.state.jobs)

"""Handlers that hang: the slot rule on the virtual clock (a timed-out attempt holds its worker until
it is gone), the poison-job experiment under the old and the new rule, with a kill -9 in the middle,
and the real pools' side: a thread interrupted, the spare-thread bound, a process killed."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Abandoned, Config, JobStatus
from beaver_sim.metrics import QueueMetrics, sample
from beaver_sim.runtime import workers as workers_module
from beaver_sim.runtime.workers import REAP_GRACE, PoolWorkers
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.poison import run_poison
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.storage.wal import scan

CONFIG = Config(data_dir="/d", worker_count=1, task_timeout=0.3, max_retry=1, snapshot_interval=0)


def test_a_timed_out_attempt_holds_its_worker_until_it_is_gone() -> None:
    clock, fs = VirtualClock(), SimFS()
    pool = SimWorkers(clock, 1, 0.0, 0.01, 0.01, record=True, hang=("hang",), stop_after=1.0)
    ctl = Controller(CONFIG, clock, Storage.from_config(fs, CONFIG), pool)
    metrics = QueueMetrics()
    metrics.attach(lambda: sample(ctl))
    ctl.start()
    ctl.enqueue([("poison", {"type": "hang"}), ("healthy", {"type": "noop"})])
    clock.run(until=0.5)  # timed out at 0.3, being killed until 1.3
    assert ctl.stuck_workers() == [{"worker": 0, "job": "poison", "attempt": 1}]
    assert ctl.state.jobs["healthy"].status is JobStatus.PENDING  # no worker to run on: not dispatched
    assert ctl.state.jobs["healthy"].attempt == 0
    text = metrics.text()
    assert "queue_workers_stuck 1.0" in text and "queue_attempts_killed_total 1.0" in text
    clock.run()
    assert ctl.stuck_workers() == [] and ctl.free_workers == type(ctl.free_workers)([0])
    assert ctl.state.jobs["healthy"].status is JobStatus.COMPLETED
    assert [a.start for a in pool.attempts] == [0.0, 1.3]  # the healthy job started once it was gone
    dead: list[str] = []
    scan(fs, CONFIG.wal_dir, on_record=lambda r, _: r["type"] == R.DEAD and dead.append(r["reason"]))
    assert dead == ["timeout: handler killed"]
    c = ctl.counters
    assert (c.timeouts, c.killed, c.abandoned, c.stale) == (1, 1, 0, 1)


def test_poison_jobs_starve_healthy_ones_under_the_old_rule_only() -> None:
    old = run_poison("free-slot-at-timeout")
    assert (old["ok completed"], old["ok dead"], old["ok attempts"]) == (0, 8, 24)  # the report
    assert old["hung dead"] == 8
    new = run_poison()
    assert (new["ok completed"], new["ok attempts"], new["hung dead"], new["hung attempts"]) == (8, 8, 8, 24)
    assert (new["killed"], new["abandoned"], new["stuck"]) == (24, 0, 0)


def test_a_handler_no_one_can_stop_makes_the_controller_wait_without_spending_attempts() -> None:
    got = run_poison(stoppable=False)
    # 4 spare threads take the first 4 timed-out attempts; the next 4 keep their slots for good
    assert (got["abandoned"], got["killed"], got["stuck"]) == (4, 4, 4)
    assert (got["ok pending"], got["ok attempts"], got["ok dead"]) == (8, 0, 0)


def test_kill_9_in_the_simulator_takes_the_handlers_with_it() -> None:
    got = run_poison(crash_at=1.0)
    assert got["died with the process"] == 4  # the hung attempts in flight at the crash
    assert (got["hung dead"], got["hung attempts"]) == (8, 24)  # the interrupted attempts counted
    assert (got["ok completed"], got["ok attempts"]) == (8, 8)
    old = run_poison("free-slot-at-timeout", crash_at=1.0)
    assert old["ok completed"] == 0  # a restart alone does not save the old rule


def test_sim_workers_model_a_bounded_pool_whose_waits_count_toward_the_timeout() -> None:
    clock = VirtualClock()
    pool = SimWorkers(clock, failure_rate=0.0, work_min=1.0, work_max=1.0, threads=1)
    seen: list[tuple[float, str]] = []
    for job in ("a", "b"):
        pool.submit(job, 1, 0, {}, lambda j, *_: seen.append((clock.now(), j)))
    clock.run()
    assert seen == [(1.0, "a"), (2.0, "b")]
    assert SimWorkers(clock).abandon("x", 1, 0) == Abandoned(False)  # the default: runs on, slot free


# -- the real pools --------------------------------------------------------------------------------


def spin(payload: dict[str, Any]) -> None:
    while True:
        time.sleep(0.01)


def deaf(payload: dict[str, Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(payload["ready"]).touch()
    threading.Event().wait()


def crash(payload: dict[str, Any]) -> None:
    os._exit(3)


def drive(config: Config, handlers: dict[str, Any], script: Any) -> Any:
    async def go() -> Any:
        loop = asyncio.get_running_loop()
        workers = PoolWorkers(loop, config, handlers)
        results: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        try:
            return await script(workers, lambda *a: results.put_nowait(a), results)
        finally:
            workers.close(timeout=0)

    return asyncio.run(go())


def test_a_thread_stuck_in_python_is_interrupted() -> None:
    async def script(workers: PoolWorkers, done: Any, results: Any) -> None:
        workers.submit("j", 1, 0, {"type": "spin"}, done)
        await asyncio.sleep(0.05)
        assert workers.abandon("j", 1, 0) == Abandoned(False, "handler interrupted")
        job, _attempt, ok, error = await asyncio.wait_for(results.get(), 10)
        assert (job, ok) == ("j", False) and error.startswith("AttemptTimedOut")
        assert workers.running_without_slot() == 0  # its thread is back

    drive(Config(worker_count=1), {"spin": spin}, script)


def test_threads_that_cannot_be_interrupted_keep_their_slot_beyond_the_spare_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "SPARE_THREADS", 1)
    gate = threading.Event()

    async def script(workers: PoolWorkers, done: Any, results: Any) -> None:
        for job in ("a", "b"):
            workers.submit(job, 1, 0, {"type": "blocked"}, done)
        await asyncio.sleep(0.05)
        assert workers.abandon("a", 1, 0).held is False  # the one spare thread: runs on
        assert workers.abandon("b", 1, 0) == Abandoned(True, "handler interrupted")  # holds its slot
        assert workers.running_without_slot() == 1 and workers.detached_attempts() == [("a", 1)]
        gate.set()
        got = sorted([(await asyncio.wait_for(results.get(), 10))[0] for _ in range(2)])
        assert got == ["a", "b"] and workers.running_without_slot() == 0

    drive(Config(worker_count=1), {"blocked": lambda p: gate.wait()}, script)


def test_a_process_that_ignores_sigterm_is_killed_and_replaced(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    async def script(workers: PoolWorkers, done: Any, results: Any) -> None:
        workers.submit("j", 1, 0, {"type": "deaf", "ready": str(ready)}, done)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and results.empty(), "the handler never started"
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        assert workers.abandon("j", 1, 0) == Abandoned(True, "handler killed")
        assert await asyncio.wait_for(results.get(), 10) == ("j", 1, False, "timeout: handler killed")
        assert time.monotonic() - t0 >= REAP_GRACE * 0.9  # SIGTERM was ignored: SIGKILL after the grace
        workers.submit("k", 1, 0, {"type": "noop"}, done)  # on the replacement
        assert await asyncio.wait_for(results.get(), 10) == ("k", 1, True, None)
        workers.submit("c", 1, 0, {"type": "crash"}, done)
        assert await asyncio.wait_for(results.get(), 10) == (
            "c",
            1,
            False,
            "handler process died (exit code 3)",
        )

    drive(Config(worker_count=1, executor="process"), {"deaf": deaf, "crash": crash}, script)

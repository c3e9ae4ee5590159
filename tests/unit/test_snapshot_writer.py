"""Snapshots written off the controller's thread (issue 20): the checkpoint seam keeps its order
(WAL synced through N before snapshot N, rotation, pruning and segment deletion only once it is
durable), at most one is in flight, and in `beaver run` a forked child writes it: a failure is one
log line and the queue runs on, a stop waits for the final one, an abandoned one changes nothing."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.runtime.server import request
from beaver_sim.runtime.service import Service, read_state
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.storage.snapshot import SnapshotStore

DATA = "/run"


class Deferred:
    """A snapshot writer that writes when told to: the checkpoint's halves apart, as in the runtime."""

    def __init__(self) -> None:
        self.calls: list[tuple[Storage, Callable[[bool], None], int]] = []

    def __call__(self, storage: Storage, done: Callable[[bool], None]) -> None:
        self.calls.append((storage, done, storage.state.last_seq))


def controller(writer: Deferred, **kw: Any) -> tuple[Controller, SimFS, VirtualClock]:
    fs, clock = SimFS(), VirtualClock()
    cfg = Config(data_dir=DATA, snapshot_interval=0, segment_bytes=4096, **kw)
    storage = Storage.from_config(fs, cfg)
    workers = SimWorkers(clock, cfg)
    return Controller(cfg, clock, storage, workers, writer), fs, clock


def wal_files(fs: SimFS) -> list[str]:
    return sorted(fs.listdir(DATA + "/wal"))


def test_the_snapshot_holds_the_cut_and_compaction_waits_until_it_is_durable() -> None:
    writer = Deferred()
    ctl, fs, clock = controller(writer)
    ctl.enqueue([(f"j{i}", {"i": i}) for i in range(20)])
    clock.run()
    ctl.checkpoint()
    ((storage, done, cut),) = writer.calls
    assert ctl.snapshot_in_flight == cut == ctl.state.last_seq
    assert ctl.storage.wal.durable_lsn == ctl.storage.wal.written_lsn  # synced through the cut first
    segments = wal_files(fs)
    ctl.enqueue([("late", {})])  # the loop goes on: records after the cut
    clock.run()
    ctl.checkpoint()  # one snapshot at a time: nothing more is started
    assert len(writer.calls) == 1 and wal_files(fs) == segments and fs.listdir(DATA + "/snap") == []
    assert ctl.state.last_seq > cut

    # written later, from a copy taken at the cut (the forked child's image of the state)
    q = ctl.state
    saved, q.last_seq = q.last_seq, cut
    try:
        path = storage.snapshots.save(cut, 2, b"{}")
    finally:
        q.last_seq = saved
    done(True)
    assert path.endswith(f"snap-{cut:020d}.json") and ctl.last_snapshot_seq == cut
    assert ctl.snapshot_in_flight is None and ctl.counters.snapshots == 1
    # a new segment starts after the records logged meanwhile: none of them is covered or deleted
    assert wal_files(fs)[-1] == f"wal-{ctl.state.last_seq + 1:020d}.log"


def test_a_failed_snapshot_changes_nothing_and_the_next_one_is_taken() -> None:
    writer = Deferred()
    ctl, fs, clock = controller(writer)
    ctl.enqueue([("a", {})])
    clock.run()
    ctl.checkpoint()
    segments = wal_files(fs)
    writer.calls[0][1](False)
    assert ctl.snapshot_in_flight is None and ctl.last_snapshot_seq == 0 and ctl.counters.snapshots == 0
    assert wal_files(fs) == segments
    ctl.checkpoint()
    assert len(writer.calls) == 2


def config(tmp_path: Path, **kw: Any) -> Config:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "d"),
        "worker_count": 2,
        "work_min": 0.0,
        "work_max": 0.005,
        "failure_rate": 0.0,
        "snapshot_interval": 0.02,
        "snapshot_log_ratio": 0.0,
    }
    return Config(**{**base, **kw})


def snapshots(cfg: Config) -> list[str]:
    return sorted(n for n in os.listdir(cfg.snapshot_dir) if n.endswith(".json"))


def test_a_background_snapshot_that_fails_is_one_line_and_the_queue_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    lines: list[str] = []

    def full(*_: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        runner = asyncio.create_task(service.run())
        monkeypatch.setattr(SnapshotStore, "save", full)  # the forked child inherits it
        ok = await asyncio.to_thread(request, cfg.data_dir, {"op": "enqueue", "jobs": [["a", {}]]})
        assert ok["ok"]
        while not any("failed" in line for line in lines):
            await asyncio.sleep(0.01)
        assert service.controller.counters.snapshots == 0 and service.fatal is None
        monkeypatch.undo()
        ok = await asyncio.to_thread(request, cfg.data_dir, {"op": "enqueue", "jobs": [["b", {}]]})
        assert ok["ok"]  # still serving, and the next snapshot is taken
        while service.controller.counters.snapshots == 0:
            await asyncio.sleep(0.01)
        service.request_stop()
        await runner
        await service.close()
        assert service.fatal is None

    asyncio.run(go())
    failed = [line for line in lines if "snapshot" in line and "failed" in line]
    assert (
        failed and "No space left on device" in failed[0] and "the WAL still holds every record" in failed[0]
    )
    st = read_state(cfg).state.stats()
    assert (st["jobs"], st["completed"]) == (2, 2)


def test_stop_writes_the_final_snapshot_in_a_child_and_waits_for_it(tmp_path: Path) -> None:
    cfg = config(tmp_path, snapshot_interval=0)  # no periodic snapshot: only the final one

    async def go() -> Service:
        service = Service(cfg, serve_metrics=False)
        await service.start()
        runner = asyncio.create_task(service.run(exit_when_idle=True))
        service.controller.enqueue([(f"j{i}", {}) for i in range(50)])
        await runner
        parent = os.getpid()
        forked: list[int] = []
        real_fork = os.fork

        def fork() -> int:
            pid = real_fork()
            if pid:
                forked.append(pid)
            return pid

        os.fork = fork
        try:
            await service.close()
        finally:
            os.fork = real_fork
        assert os.getpid() == parent and len(forked) == 1
        return service

    service = asyncio.run(go())
    assert service.controller.counters.snapshots == 1 and service.fatal is None
    seq = read_state(cfg).state.last_seq
    assert snapshots(cfg) == [f"snap-{seq:020d}.json"]


def test_abandoning_a_snapshot_in_flight_kills_its_child_and_keeps_every_file(tmp_path: Path) -> None:
    cfg = config(tmp_path, snapshot_interval=0)

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, control_socket=False)
        await service.start()
        ctl = service.controller
        ctl.enqueue([(f"j{i}", {}) for i in range(10)])
        ctl.checkpoint()
        child, seq = service.snapshots.child, ctl.snapshot_in_flight
        assert child is not None and seq == service.snapshots.writing == ctl.state.last_seq
        assert service.snapshots.abandon() == seq
        assert ctl.snapshot_in_flight is None and ctl.last_snapshot_seq == 0
        pid = child.pid
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no zombie, no writer left
        service.request_stop()
        await service.close()

    asyncio.run(go())
    assert read_state(cfg).state.stats()["jobs"] == 10

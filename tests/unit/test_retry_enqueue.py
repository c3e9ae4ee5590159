"""Retry-safe enqueue in the simulator: clients send batches of jobs and resend every batch that was
not acknowledged (after a crash at any record boundary or in the middle of any record, after ENOSPC
on any write or EIO on any fsync, after a reply lost to a crash once the batch was written), and
every run ends with every job exactly once, under every crash model. The SimFS fault hook itself,
and the checker's invariant 8 catching a controller that is not retry-safe."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from beaver_sim.core import controller as C
from beaver_sim.core.types import Config, DuplicateJob
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import CRASH_MODELS, IOFault, SimFS
from beaver_sim.sim.sweep import crash_sweep, violations
from beaver_sim.sim.workload import Workload

CONFIG = Config(data_dir="/data", worker_count=4, task_timeout=1.0, snapshot_interval=0.5, segment_bytes=4096)
SIM = Simulation(config=CONFIG, workload=Workload(jobs=24, rate=20.0, batch=6), seed=3)


@pytest.mark.parametrize("model", CRASH_MODELS)
def test_every_record_boundary_and_io_error_ends_with_every_job_exactly_once(model: str) -> None:
    df = crash_sweep(replace(SIM, model=model), "records+io", executor="serial")
    assert violations(df) == []
    kinds = df.groupby("kind")["outcome"].value_counts().to_dict()
    io = ("enospc", "short", "eio", "erename", "edirsync")
    assert set(kinds) == {(k, "ok") for k in ("record", "lsn", *io)}  # every point crashed
    assert kinds[("record", "ok")] > 60 and kinds[("enospc", "ok")] > 30 and kinds[("eio", "ok")] > 30
    assert kinds[("short", "ok")] == kinds[("enospc", "ok")] and kinds[("erename", "ok")] >= 3


def test_a_half_written_batch_is_retried_whole_and_ends_once() -> None:
    """A crash in the middle of a batch's write (its answer never sent): the recovered state holds
    a prefix of the batch; the client's blind retry of the whole batch completes it."""
    r = replace(SIM, crash=CrashPlan("record", 4), model="process").run()  # 2 whole ENQUEUEs of batch 1
    assert r.ok and r.crashes[0]["record"][:2] == [4, "enqueue"]
    q = r.state
    assert sorted(q.jobs) == [f"task-{i:03d}" for i in range(1, 25)]
    assert r.summary["completed"] + r.summary["dead"] == 24
    sent = [ids for _t, ids in r.sent]
    assert sent.count(sent[0]) == 2  # the first batch went twice: once cut short, once retried


def test_a_controller_that_rejects_retries_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    strict = C.Controller._check_batch

    def no_retries(self: C.Controller, jobs: object) -> object:
        jobs = list(jobs)  # type: ignore[call-overload]
        for job_id, _ in jobs:
            if job_id in self.state.jobs:
                raise DuplicateJob(f"duplicate job id {job_id!r}")
        return strict(self, jobs)

    monkeypatch.setattr(C.Controller, "_check_batch", no_retries)
    df = crash_sweep(replace(SIM, model="process"), "records", executor="serial")
    assert any("duplicate job id" in v["detail"] for v in violations(df))


def test_a_controller_that_logs_a_batch_out_of_order_breaks_invariant_8(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    strict = C.Controller._check_batch

    def reversed_(self: C.Controller, jobs: object) -> object:
        new, present = strict(self, jobs)  # type: ignore[arg-type]
        return new[::-1], present

    monkeypatch.setattr(C.Controller, "_check_batch", reversed_)
    df = crash_sweep(replace(SIM, model="process"), "records", executor="serial")
    assert any(
        v["invariant"] == 8 and "before it in its unacknowledged batch" in v["detail"] for v in violations(df)
    )


def test_simfs_fault_fails_the_nth_write_or_sync_once() -> None:
    fs = SimFS()
    fs.makedirs("/d")
    f = fs.create("/d/x")
    fs.sync_dir("/d")
    fs.fault = IOFault("write", 2, errno.ENOSPC, keep=3)
    f.write(b"one")
    with pytest.raises(OSError) as e:
        f.write(b"two-two")
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/d/x"
    f.write(b"!")  # fires once
    assert fs.read_bytes("/d/x") == b"onetwo!"
    fs.fault = IOFault("sync", 1, errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        f.sync()
    assert fs.after_crash("power-loss").files["/d/x"].data == b""  # nothing made durable
    f.sync()
    assert fs.after_crash("power-loss").files["/d/x"].data == b"onetwo!"


def test_io_plans_parse_and_replay() -> None:
    plan = CrashPlan.parse("enospc:7")
    assert (plan.kind, plan.at, plan.describe()) == ("enospc", 7, "enospc 7")
    assert plan.fault().op == "write" and CrashPlan("eio", 1).fault().code == errno.EIO
    sim = replace(SIM, crash=CrashPlan("eio", 5), model="power-loss")
    r = sim.run()
    assert r.ok and r.crashes[0]["point"] == "eio 5"
    assert Simulation.from_token(sim.token()).run().summary["wal_sha256"] == r.summary["wal_sha256"]

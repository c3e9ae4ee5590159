"""Crash plans land exactly where they say: at a WAL byte (LSN, across segments and restarts), right
after a record, at the n-th persistence point, at a virtual time; and the recovery cost model."""

from __future__ import annotations

import pytest

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.capture import wal_records
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import POINTS, CrashPlan, recovery_model_seconds
from beaver_sim.sim.fs import CRASH_MODELS
from beaver_sim.sim.workload import Workload

QUICK = Config(data_dir="/sim", snapshot_interval=0.4, snapshot_log_ratio=0.3)


def run(plan: CrashPlan | list[CrashPlan], model: str = "process", config: Config = QUICK, jobs: int = 30):
    return Simulation(config, Workload(jobs), 4, crash=plan, model=model).run()


def base_records() -> list:
    r = Simulation(QUICK, Workload(30), 4).run()
    return r.records(0)


def test_plans_parse_describe_and_refuse_nonsense() -> None:
    assert CrashPlan.parse("lsn:1234") == CrashPlan("lsn", 1234)
    assert CrashPlan.parse("record:7").describe() == "record 7"
    assert CrashPlan.parse("point:snapshot-renamed#2") == CrashPlan("point", "snapshot-renamed", 2)
    assert CrashPlan.parse("time:1.5").describe() == "time 1.5s"
    assert CrashPlan.from_list(CrashPlan("lsn", 9, torn=3).as_list()) == CrashPlan("lsn", 9, 1, 3)
    for bad in ("lsn", "lsn:x", "point:nowhere", "meteor:3", "time:-1"):
        with pytest.raises(BeaverError):
            CrashPlan.parse(bad)


def test_a_crash_at_an_lsn_keeps_exactly_the_bytes_before_it() -> None:
    records = base_records()
    rec, start, end = records[len(records) // 2]
    x = start + (end - start) // 3
    r = run(CrashPlan("lsn", x))
    crashed = r.lives[0]
    assert r.crashes[0]["lsn"] == x and r.crashes[0]["record"][0] == rec["seq"] - 1
    assert wal_records(crashed.fs, QUICK.wal_dir)[-1][2] == start  # the last whole record ends before it
    assert r.recoveries[0]["bytes_truncated"] == x - start  # the torn prefix, cut by recovery
    assert r.lives[0].recovered_seq == rec["seq"] - 1 and r.ok


def test_a_crash_at_a_record_ends_the_log_with_it() -> None:
    records = base_records()
    for rec, _start, end in (records[10], records[-5]):
        r = run(CrashPlan("record", rec["seq"]))
        assert r.lives[0].recovered_seq == rec["seq"] and r.crashes[0]["lsn"] == end
        assert r.recoveries[0]["bytes_truncated"] == 0 and r.ok


def test_lsns_run_on_across_segments_and_restarts() -> None:
    r = run([CrashPlan("record", 60), CrashPlan("lsn", 9000)])
    lsns = r.wal.sort_values(["life", "lsn"])
    assert lsns["lsn"].is_monotonic_increasing  # a new life writes after what survived
    assert r.crashes[1]["lsn"] == 9000 and r.lives[1].start_lsn < 9000
    segments = {rec["seq"]: start for rec, start, _ in r.records(1)}
    assert len(r.wal_files) >= 2 and len(segments) > 0  # rotated at every checkpoint


@pytest.mark.parametrize("point", POINTS)
def test_every_named_point_is_reached_and_crashes_there(point: str) -> None:
    for model in CRASH_MODELS:
        r = run(CrashPlan("point", point, 1), model)
        assert r.crashes and r.crashes[0]["point"] == f"point {point}#1", point
        assert r.ok, r.violations[:3]


def test_the_second_occurrence_of_a_point_comes_later() -> None:
    a = run(CrashPlan("point", "snapshot-renamed", 1)).crashes[0]
    b = run(CrashPlan("point", "snapshot-renamed", 2)).crashes[0]
    assert b["time"] > a["time"] and b["lsn"] > a["lsn"]


def test_a_crash_at_a_time() -> None:
    r = run(CrashPlan("time", 1.25))
    assert r.crashes[0]["time"] == 1.25 and r.lives[1].start == 1.25 + r.sim.config.restart_delay and r.ok


def test_power_loss_keeps_the_synced_log_and_loses_the_unsynced_tail() -> None:
    records = base_records()
    x = records[len(records) // 2][1] + 5
    process, power = run(CrashPlan("lsn", x)), run(CrashPlan("lsn", x), "power-loss")
    assert power.lives[0].recovered_seq <= process.lives[0].recovered_seq
    assert power.ok and process.ok  # fsync always: only unacknowledged records go
    never = Config(data_dir="/sim", fsync="never", snapshot_interval=0)
    assert not run(CrashPlan("lsn", x), "power-loss", never).ok  # acknowledged, never synced, lost
    assert run(CrashPlan("lsn", x), "process", never).ok  # the page cache survives a kill -9


def test_the_recovery_model_grows_with_the_work() -> None:
    assert recovery_model_seconds(0, 0, 0) > 0
    assert recovery_model_seconds(1000, 10**5, 0) > recovery_model_seconds(100, 10**4, 0)
    assert recovery_model_seconds(0, 0, 10**6) > recovery_model_seconds(0, 0, 10**3)
    r = run(CrashPlan("lsn", 7000))
    rec = r.recoveries[0]
    assert rec["model_seconds"] == recovery_model_seconds(
        rec["records_replayed"], rec["wal_bytes"], rec["snapshot_bytes"]
    )

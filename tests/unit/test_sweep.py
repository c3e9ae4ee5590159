"""Crash sweeps: point sets, every byte of a 40-job run under every crash model, the same rows from
every executor and with or without shared runs, minimal counterexamples, and `beaver crash-sweep`."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim import mutants
from beaver_sim.sim.cli import register
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import POINTS, CrashPlan
from beaver_sim.sim.fs import METADATA_FIRST, POWER_LOSSES, TORN_BLOCKS
from beaver_sim.sim.sweep import (
    TORN_MAX,
    _chunks,
    base_run,
    crash_sweep,
    enumerate_points,
    failing,
    lifecycle,
    minimal_counterexample,
    violations,
    with_torn,
)
from beaver_sim.sim.workload import Workload


def sim(jobs: int = 16, model: str = "process", fsync: str = "always", **config: object) -> Simulation:
    """The life-cycle workload (timeouts, dead jobs, rotation, pruning, segment deletion)."""
    return lifecycle(jobs, 3, model, fsync, **config)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "recovery_seconds"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert violations(a) == violations(b)


def test_point_sets() -> None:
    base = base_run(sim(20, snapshot_interval=0.3, snapshot_log_ratio=0.5))
    records = enumerate_points(base, "records")
    assert len(records) == 2 * len(base.trace)
    assert [p.kind for p in records[:2]] == ["lsn", "record"]  # in log order: torn point, then the boundary
    marks = enumerate_points(base, "marks")
    assert {p.at for p in marks} == set(POINTS) and all(p.kind == "point" for p in marks)
    everything = enumerate_points(base, "all")
    assert len(everything) == base.end + len(marks)
    both = enumerate_points(base, "records+marks")
    assert set(both) == set(records) | set(marks) and len(both) == len(records) + len(marks)
    sample = enumerate_points(base, "sample:50", seed=3)
    assert len(sample) == 50 and sample == enumerate_points(base, "sample:50", seed=3)
    assert sample != enumerate_points(base, "sample:50", seed=4)
    torn = with_torn(records, "random", seed=9)
    assert torn == with_torn(records, "random", seed=9) and torn != with_torn(records, "random", seed=8)
    assert [replace(p, torn=0) for p in torn] == records and {1 <= p.torn <= TORN_MAX for p in torn} == {True}
    assert len({p.torn for p in torn}) > 10 and with_torn(records, 7, 0)[0].torn == 7
    with pytest.raises(BeaverError, match="torn must be"):
        with_torn(records, "some", 0)
    assert enumerate_points(base, ["lsn:5", "time:1"]) == [CrashPlan("lsn", 5), CrashPlan("time", 1.0)]
    assert enumerate_points(base, "lsn:5,marks")[-1] == CrashPlan("lsn", 5)
    with pytest.raises(BeaverError, match="expected all"):
        enumerate_points(base, "everything")


def test_the_lifecycle_workload_reaches_every_persistence_point_several_times() -> None:
    base = base_run(sim())
    reached = Counter(name for name, *_ in base.marks)
    assert set(reached) == set(POINTS) and min(reached.values()) >= 3, reached
    r = base.result
    outcomes = Counter(r.attempts["outcome"])
    assert outcomes["timeout"] >= 2 and outcomes["failed"] >= 2 and r.summary["dead"] >= 1
    assert r.ok and r.summary["completed"] + r.summary["dead"] == 16


@pytest.mark.parametrize(
    ("model", "torn"),
    [("process", 0), ("power-loss", 0), ("power-loss", "random"), (METADATA_FIRST, 0), (TORN_BLOCKS, 0)],
)
def test_every_byte_of_the_lifecycle_run_keeps_every_invariant(model: str, torn: int | str) -> None:
    """Every WAL byte and every persistence point of a 16-job run (6.7 KB of log, 8 segments, 6
    snapshots), under a kill -9, a power loss, a power loss that keeps a torn write, one that
    commits every name before the data, and one that keeps later blocks and loses earlier ones."""
    df = crash_sweep(sim(16, model), "all", executor="serial", progress=False, torn=torn)
    points = df[df["kind"] == "point"]
    assert len(df) == df.attrs["wal_bytes"] + len(points) and set(points["at"]) == set(POINTS)
    assert not failing(df), violations(df)[:3]
    assert set(df["outcome"]) == {"ok"}
    torn_cut = (df[df["kind"] == "lsn"]["bytes_truncated"] > 0).sum()
    # a torn record (or a hole before a kept block) survives, and recovery cuts it
    assert (torn_cut > 0) == (model in ("process", TORN_BLOCKS) or torn != 0)


def test_interval_may_lose_the_last_window_of_acknowledged_jobs_and_nothing_else() -> None:
    """A power loss 10 ms after the first batch is acknowledged under `fsync: interval` (synced
    every 50 ms) loses that batch: inside the documented window, so no violation. Sweeps of every
    record boundary and torn point, and a sample of every byte with random torn writes, find
    no loss outside it; the mutant without the sync timer does (invariant 1)."""
    s = sim(16, "power-loss", "interval")
    first, ids = s.run().acks[0]
    r = replace(s, crash=CrashPlan("time", first + 0.01)).run()
    assert r.ok and r.checker.lost_in_window == set(ids) and r.summary["jobs_lost"] == 0
    assert r.summary["completed"] + r.summary["dead"] == 16 - len(ids)
    for points in ("records+marks", "sample:600"):
        df = crash_sweep(s, points, executor="serial", progress=False, torn="random")
        assert not failing(df), violations(df)[:3]
    for model in POWER_LOSSES[1:]:
        df = crash_sweep(replace(s, model=model), "records+marks", executor="serial", progress=False)
        assert not failing(df), (model, violations(df)[:3])
    broken = crash_sweep(replace(s, mutant="interval-without-sync"), "records", executor="serial")
    assert any(v["invariant"] == 1 and "missing after recovery" in v["detail"] for v in violations(broken))


def test_without_fsync_a_power_loss_loses_acknowledged_jobs() -> None:
    never = sim(20, "power-loss", "never")
    df = crash_sweep(never, "records", executor="serial", progress=False)
    assert failing(df) and (df["jobs_lost"] > 0).any()
    assert {v["invariant"] for v in violations(df)} >= {1, 6}
    example = minimal_counterexample(never, df, "records", executor="serial", progress=False)
    assert example is not None and example["jobs"] == 1
    assert example["earliest"]["point"] == int(df[df["violations"] > 0]["point"].min())
    replay = Simulation.from_token(example["smallest"]["token"]).run()
    assert not replay.ok and replay.sim.workload.jobs == 1
    assert minimal_counterexample(never, crash_sweep(sim(5), "marks", executor="serial"), "marks") is None


@pytest.mark.parametrize(
    ("model", "fsync", "mutant", "points"),
    [
        ("process", "always", None, "records+marks"),
        ("power-loss", "never", None, "records"),
        ("power-loss", "always", "no-dir-fsync", "records"),
        ("process", "always", "replay-without-completed-check", "records"),
        ("metadata-first", "never", None, "records"),
        ("torn-blocks", "never", None, "records"),
        ("torn-blocks", "always", "rename-before-fsync", "records+marks"),
    ],
)
def test_shared_runs_give_the_rows_of_runs_from_scratch(
    model: str, fsync: str, mutant: str | None, points: str
) -> None:
    s = sim(20, model, fsync, snapshot_interval=0.3, snapshot_log_ratio=0.5, failure_rate=0.3)
    s.mutant = mutant
    shared = crash_sweep(s, points, executor="serial", progress=False)
    alone = crash_sweep(s, points, executor="serial", progress=False, share=False)
    same_rows(shared, alone)
    assert shared.attrs["groups"] < len(shared)


def test_a_process_pool_and_dask_give_the_same_dataframe() -> None:
    from dask.distributed import Client, LocalCluster

    s = sim(25, "power-loss", "never")
    serial = crash_sweep(s, "records+marks", executor="serial", progress=False)
    with ProcessPoolExecutor(2) as pool:
        same_rows(serial, crash_sweep(s, "records+marks", executor=pool, progress=False, chunk=7))
    with (
        LocalCluster(n_workers=2, processes=False, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        same_rows(
            serial, crash_sweep(s, "records+marks", executor=client.get_executor(), progress=False, chunk=5)
        )
    assert list(serial["point"]) == list(range(len(serial)))


# -- beaver crash-sweep ----------------------------------------------------------------------------


def beaver(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    root = argparse.ArgumentParser(prog="beaver")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_beaver_crash_sweep_json_and_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    code, out = beaver(
        capsys, "crash-sweep", "--jobs", "15", "--executor", "serial", "--json", "--out", "s.csv"
    )
    r = json.loads(out)
    assert code == 0 and r["ok"] and r["violations"] == [] and r["points"] > 50
    assert {"points", "ok", "violations", "wal_bytes", "seconds"} <= r.keys()
    assert len(pd.read_csv("s.csv")) == r["points"]
    code, out = beaver(
        capsys, "crash-sweep", "--jobs", "10", "--crash-model", "power-loss", "--fsync", "never",
        "--executor", "serial", "--json", "--out", "s.parquet",
    )  # fmt: skip
    r = json.loads(out)
    assert code == 1 and not r["ok"] and r["counterexample"]["jobs"] == 1
    assert {"point", "invariant", "detail"} <= r["violations"][0].keys()
    assert len(pd.read_parquet("s.parquet")) == r["points"]
    code, out = beaver(
        capsys, "crash-sweep", "--jobs", "5", "--executor", "serial", "--points", "lsn:300,record:5"
    )
    assert code == 0 and "2 crash points" in out
    with pytest.raises(BeaverError, match=r"csv or \.parquet"):
        beaver(capsys, "crash-sweep", "--out", "x.txt")


@pytest.mark.parametrize("model", ["process", *POWER_LOSSES])
def test_strict_wal_recovery_never_refuses_what_a_crash_alone_leaves(model: str) -> None:
    """`wal_recovery: strict` refuses only a whole last record that fails its checksum, which no
    crash under any model leaves: every record boundary and torn point still recovers."""
    df = crash_sweep(
        sim(16, model, wal_recovery="strict"), "records+marks", executor="serial", progress=False
    )
    assert not failing(df), violations(df)[:3]


@pytest.mark.parametrize("model", ["metadata-first", "torn-blocks"])
def test_beaver_takes_every_crash_model(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--jobs", "8", "--crash-model", model)
    code, out = beaver(capsys, "crash-sweep", *argv, "--executor", "serial", "--json", "--no-progress")
    assert code == 0 and json.loads(out)["model"] == model and json.loads(out)["ok"]
    with pytest.raises(SystemExit):
        beaver(capsys, "crash-sweep", "--crash-model", "meteor")
    assert "invalid choice: 'meteor'" in capsys.readouterr().err


@pytest.mark.parametrize(("torn", "subsets"), [("random", 0), (0, 3)])
def test_shared_runs_give_the_rows_of_runs_from_scratch_with_torn_writes(
    torn: str | int, subsets: int
) -> None:
    """Points of one group whose recoveries differ each resume from the crash itself: a recovery
    that was only tried (to compare with the group's) has already cut the files' torn tail, and
    resuming from those files made the row report nothing cut (7 of these 79 rows before the fix)."""
    s = lifecycle(8, 9, "power-loss", wal_preallocate="fallocate")
    options: dict[str, Any] = {"executor": "serial", "progress": False, "torn": torn, "subsets": subsets}
    shared = crash_sweep(s, "records+marks", **options)
    same_rows(shared, crash_sweep(s, "records+marks", share=False, **options))
    assert (shared["bytes_truncated"] > 0).any()


@pytest.mark.parametrize(
    ("model", "fsync", "points", "torn", "merges"),
    [
        ("process", "always", "records+marks", 0, True),
        ("power-loss", "never", "records", 0, False),  # a write's points share one recovery anyway
        ("power-loss", "always", "records+times:10", "random", True),
        ("metadata-first", "interval", "records", 0, False),
        ("torn-blocks", "always", "records", 0, True),
    ],
)
def test_merged_continuations_give_the_rows_of_continuations_run_to_the_end(
    model: str, fsync: str, points: str, torn: int | str, merges: bool
) -> None:
    """Continuations whose states meet share the rest of the run (sim/merge.py): the lifecycle
    workload with its first 12 jobs in one batch (so the crashes inside that write recover
    different prefixes of it and converge once the clients resend it) gives the rows of
    `merge=False`, which runs every continuation to its end."""
    s = sim(24, model, fsync)
    s = replace(s, workload=replace(s.workload, batch=12))
    options: dict[str, Any] = {"executor": "serial", "progress": False, "torn": torn}
    merged = crash_sweep(s, points, **options)
    same_rows(merged, crash_sweep(s, points, merge=False, **options))
    assert (merged.attrs["merged"] > 0) == merges


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_every_mutant_is_judged_the_same_with_and_without_merging(name: str) -> None:
    """Each mutant's own sweep (its crash model and points, 30 jobs at t=0: one first write that
    many points crash inside) gives the same rows whether converging continuations merge or not."""
    catch = mutants.MUTANTS[name].catch
    config = Config(data_dir="/sim", **catch.get("config", {}))
    s = Simulation(config, Workload(30), 11, model=catch["model"], mutant=name)
    options: dict[str, Any] = {"executor": "serial", "progress": False}
    merged = crash_sweep(s, catch["points"], **options)
    same_rows(merged, crash_sweep(s, catch["points"], merge=False, **options))


def test_the_points_of_one_write_share_a_task_up_to_a_bound() -> None:
    """`_chunks` cuts tasks of about `size` points, never inside a group, and not between points
    of one write until a task holds `most` of them (continuations merge only within a task)."""
    # (point, plan, lsn, group): groups 0-5 in write "a", group 6 in "b", groups 7-9 in "c"
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7, 8, 9]
    moments = [("write", "a")] * 12 + [("write", "b")] + [("write", "c")] * 4
    todo = [(i, ["record", i], i, g) for i, g in enumerate(groups)]
    cut = [[p[0] for p in c] for c in _chunks(todo, 3, moments, 8)]
    assert cut == [list(range(8)), [8, 9, 10, 11], [12, 13, 14, 15, 16]]
    alone = [[p[0] for p in c] for c in _chunks(todo, 3, moments, 3)]  # `most` = `size`: groups only
    assert alone == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14], [15, 16]]


def test_every_continuation_of_a_batch_sent_at_t0_merges_but_the_first() -> None:
    """60 jobs sent at t=0 in one batch: the crashes inside its write recover 60 different prefixes
    and converge once the client resends it. With the write's points in one task, all of them but
    the first to run on merge, and the one that tears the batch's first record, which recovers no
    record (its clients resend at the restart, before any ack). Split into several tasks, each task
    ran one more to the end (55 merged)."""
    s = Simulation(Config(data_dir="/sim"), Workload(60), 11)
    options: dict[str, Any] = {"executor": "serial", "progress": False, "workers": 2}
    df = crash_sweep(s, "records", **options)
    assert (df.attrs["groups"], df.attrs["merged"]) == (204, 58)
    same_rows(df, crash_sweep(s, "records", merge=False, **options))

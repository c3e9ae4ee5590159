"""Simulation: the real controller on VirtualClock + SimFS + SimWorkers, its summary (the `beaver sim
--json` contract), its DataFrames, determinism down to the bytes, replay tokens, and `beaver sim`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.cli import register
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.workload import Workload

SUMMARY_KEYS = {
    "seed",
    "jobs",
    "completed",
    "dead",
    "attempts",
    "events",
    "virtual_seconds",
    "wal_bytes",
    "wal_sha256",
    "crash",
    "recovery",
    "invariants",
}


def sim(jobs: int = 40, seed: int = 1, **kw: object) -> Simulation:
    config = kw.pop("config", None) or Config(data_dir="/sim")
    return Simulation(config, Workload(jobs), seed, **kw)  # type: ignore[arg-type]


def deterministic(summary: dict) -> dict:
    """The summary without the measured (wall-clock) recovery time."""
    out = json.loads(json.dumps(summary))
    for r in out["recoveries"] + ([out["recovery"]] if out["recovery"] else []):
        r.pop("seconds")
    return out


def test_the_seed_workload_runs_to_quiescence_with_every_invariant() -> None:
    r = sim(100).run()
    s = r.summary
    assert s.keys() >= SUMMARY_KEYS
    assert s["invariants"] == {"ok": True, "violations": []}
    assert s["completed"] + s["dead"] == 100 and s["dead"] < 10
    assert sum(s["attempts"].values()) == 100 and max(map(int, s["attempts"])) <= 3
    assert s["crash"] is None and s["recovery"] is None
    assert s["virtual_seconds"] > 0 and s["events"] > 200 and len(s["wal_sha256"]) == 64
    assert (
        s["wal_bytes"] == r.end_lsn > sum(len(d) for d in r.wal_files.values()) > 0
    )  # old segments compacted
    json.dumps(s)  # the contract is JSON


def test_dataframes_describe_jobs_attempts_records_and_samples() -> None:
    r = sim(60, config=Config(data_dir="/sim", task_timeout=0.3)).run()
    jobs, attempts, wal, metrics = r.jobs, r.attempts, r.wal, r.metrics
    assert list(jobs["job"]) == [f"task-{i:03d}" for i in range(1, 61)]
    assert set(jobs["status"]) <= {"completed", "dead"} and (jobs["acknowledged"] == 0).all()
    assert len(attempts) == len(r.workers.attempts) == jobs["attempts"].sum()
    assert set(attempts["outcome"]) == {"completed", "failed", "timeout"}  # 0.1-0.5 s work, 0.3 s timeout
    assert (attempts.loc[attempts.outcome == "timeout", "duration"] > 0.3).all()
    assert wal["seq"].tolist() == list(range(1, len(wal) + 1)) and wal["lsn"].is_monotonic_increasing
    assert wal["survived"].all() and (wal["type"] == "enqueue").sum() == 60
    assert (wal.groupby("job")["type"].first() == "enqueue").all()
    assert metrics["time"].is_monotonic_increasing and metrics["time"].iloc[1] == 1.0
    assert metrics["completed"].iloc[-1] + metrics["dead"].iloc[-1] == 60


def test_same_inputs_same_bytes_and_frames_and_another_seed_differs() -> None:
    crash = [CrashPlan("lsn", 4321), CrashPlan("time", 1.7)]
    a, b = sim(crash=crash).run(), sim(crash=crash).run()
    assert a.files == b.files and len(a.files) > 3
    assert deterministic(a.summary) == deterministic(b.summary)
    for name in ("jobs", "attempts", "wal", "metrics"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = sim(seed=2, crash=crash).run()
    assert c.summary["wal_sha256"] != a.summary["wal_sha256"]


def test_a_fresh_interpreter_with_another_hash_seed_writes_the_same_bytes() -> None:
    code = (
        "from beaver_sim.core.types import Config;"
        "from beaver_sim.sim.experiment import Simulation, Workload;"
        "from beaver_sim.sim.faults import CrashPlan;"
        "r = Simulation(Config(data_dir='/sim'), Workload(30, rate=20.0), 7, crash=CrashPlan('record', 40),"
        " model='power-loss').run(); print(r.summary['files_sha256'], r.summary['wal_sha256'])"
    )
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(done.stdout)
    here = Simulation(Config(data_dir="/sim"), Workload(30, rate=20.0), 7, crash=CrashPlan("record", 40))
    here.model = "power-loss"
    s = here.run().summary
    assert outs == {f"{s['files_sha256']} {s['wal_sha256']}\n"}


def test_poisson_arrivals_and_exponential_durations() -> None:
    r = Simulation(
        Config(data_dir="/sim", task_timeout=0.5), Workload(50, rate=10.0, durations="exponential"), 3
    ).run()
    assert r.ok, r.violations[:3]
    submitted = r.jobs["submitted"]
    assert submitted.is_monotonic_increasing and submitted.iloc[0] > 0 and submitted.iloc[-1] > 2
    assert "timeout" in set(r.attempts["outcome"])  # the long tail runs past the timeout
    assert r.attempts["duration"].min() >= 0.1


def test_a_crash_recovers_and_the_run_goes_on() -> None:
    r = sim(crash=CrashPlan("lsn", 6000)).run()
    s = r.summary
    assert s["invariants"]["ok"], s["invariants"]
    assert s["crash"]["lsn"] == 6000 and s["crash"]["model"] == "process" and s["crash"]["time"] > 0
    assert s["recovery"]["records_replayed"] > 0 and s["recovery"]["bytes_truncated"] > 0
    assert s["recovery"]["seconds"] > 0 and s["recovery"]["model_seconds"] > 0
    assert s["completed"] + s["dead"] == 40
    assert set(r.attempts["life"]) == {0, 1} and "interrupted" in set(r.attempts["outcome"])
    assert r.wal.query("life == 0")["survived"].all()  # a process crash keeps every whole record
    lost = sim(crash=CrashPlan("lsn", 6000), model="power-loss").run().wal.query("not survived")
    assert len(lost) > 0 and set(lost["life"]) == {0}  # a power loss takes the unsynced write


def test_several_crashes_one_per_life() -> None:
    plans = [CrashPlan("record", 50), CrashPlan("point", "snapshot-renamed"), CrashPlan("time", 2.5)]
    config = Config(data_dir="/sim", snapshot_interval=0.5, snapshot_log_ratio=0.3)
    r = sim(config=config, crash=plans, model="power-loss").run()
    assert [c["point"] for c in r.crashes] == [p.describe() for p in plans]
    assert len(r.recoveries) == 3 and r.ok, r.violations[:3]
    assert [life.index for life in r.lives] == [0, 1, 2, 3]


def test_without_history_a_run_drops_crashed_lives_files_and_checks_the_same() -> None:
    plans = [
        CrashPlan("lsn", 3000, torn=40, model="power-loss"),
        CrashPlan("lsn", 9000),
        CrashPlan("time", 4),
    ]
    config = Config(data_dir="/sim", snapshot_interval=0.5, snapshot_log_ratio=0.3, segment_bytes=4096)
    full = sim(config=config, crash=plans).run()
    lean = sim(config=config, crash=plans, history=False).run()
    assert len(full.crashes) == 3 and full.ok
    assert deterministic(lean.summary) == deterministic(full.summary)
    assert lean.violations == full.violations and lean.files == full.files
    assert [life.fs is None for life in lean.lives] == [True, True, True, False]
    assert all(life.hook is None for life in lean.lives[:3]) and len(lean.records(0)) == 0


def test_a_crash_the_run_never_reaches_is_reported_as_such() -> None:
    s = sim(10, crash=CrashPlan("lsn", 10**9)).run().summary
    assert s["crash"] == {"point": "lsn 1000000000", "model": "process", "reached": False}
    assert s["recovery"] is None and s["invariants"]["ok"]


def test_tokens_replay_the_run() -> None:
    a = sim(25, crash=CrashPlan("record", 30), model="power-loss", mutant="no-fsync")
    b = Simulation.from_token(a.token())
    assert (b.config, b.workload, b.seed, b.plans, b.model, b.mutant) == (
        a.config,
        a.workload,
        a.seed,
        a.plans,
        a.model,
        a.mutant,
    )
    assert a.run().summary["files_sha256"] == b.run().summary["files_sha256"]
    with pytest.raises(BeaverError, match="not a replay token"):
        Simulation.from_token("not-a-token")
    # a sweep's labels, the spec written once: each the token of the run with those plans
    crashes = [[], [CrashPlan("lsn", 7)], [CrashPlan("record", 3), CrashPlan("time", 0.5)]]
    assert a.tokens(crashes) == [replace(a, crash=c or None).token() for c in crashes]


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(BeaverError, match="max_retry"):
        sim(config=Config(data_dir="/sim", max_retry=0)).run()
    with pytest.raises(BeaverError, match="crash model"):
        sim(model="meteor").run()
    with pytest.raises(BeaverError, match="durations"):
        Workload(3, durations="gaussian")
    with pytest.raises(BeaverError, match="unknown mutant"):
        sim(mutant="no-such-thing").run()


# -- beaver sim ----------------------------------------------------------------------------------


def beaver(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    root = argparse.ArgumentParser(prog="beaver")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_beaver_sim_json_is_the_design_contract(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))  # no configs/default.yaml here: built-in defaults
    code, out = beaver(
        "sim", "--jobs", "30", "--seed", "5", "--crash-at-offset", "3000", "--json", capsys=capsys
    )
    s = json.loads(out)
    assert code == 0 and s.keys() >= SUMMARY_KEYS and s["seed"] == 5 and s["jobs"] == 30
    assert s["crash"]["lsn"] == 3000 and s["recovery"]["records_replayed"] > 0
    code, again = beaver("sim", "--replay", s["token"], "--json", capsys=capsys)
    assert json.loads(again)["wal_sha256"] == s["wal_sha256"]


def test_beaver_sim_table_and_a_mutant_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    os.chdir(str(tmp_path))
    code, out = beaver(
        "sim", "--jobs", "20", "--crash-at-record", "30", "--crash-at-time", "1", capsys=capsys
    )
    assert code == 0 and "invariants ok" in out and out.count("\ncrash ") == 2
    code, out = beaver(
        "sim", "--jobs", "20", "--mutant", "payload-less-enqueue", "--crash-at-record", "25", capsys=capsys
    )
    assert code == 1 and "payload changed" in out and "beaver sim --replay " in out
    code, out = beaver("sim", "--list-mutants", capsys=capsys)
    assert code == 0 and "no-dir-fsync" in out and "checkpoint 3" in out.lower()
    with pytest.raises(BeaverError, match="drop --jobs"):
        beaver("sim", "--replay", "x", "--jobs", "3", capsys=capsys)

"""`beaver sim --export DIR`: the simulated data directory as real files, read by the operator
commands exactly like a real one: at the end of the run, or as a crash left it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beaver_sim.cli import main
from beaver_sim.core.types import Config
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.export import export
from beaver_sim.sim.workload import Workload

pytestmark = pytest.mark.usefixtures("clean_env")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_the_end_of_a_run_reads_like_a_real_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "exported"
    s = run_json(capsys, "sim", "--jobs", "30", "--seed", "5", "--export", str(dest), "--json")
    assert s["export"]["files"] == sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in dest.rglob("*") if p.is_file()} == {"0o600"}
    status = run_json(capsys, "status", "--data-dir", str(dest), "--json")
    assert (status["completed"], status["dead"], status["jobs"]) == (s["completed"], s["dead"], 30)
    verify = run_json(capsys, "wal", "verify", "--data-dir", str(dest), "--json")
    assert verify["ok"] and verify["end_lsn"] == s["wal_bytes"]
    assert main(["wal", "dump", "--data-dir", str(dest), "--json"]) == 0
    assert all(json.loads(line)["seq"] >= 1 for line in capsys.readouterr().out.splitlines())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_after_a_crash_it_holds_what_recovery_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "crashed"
    argv = ["sim", "--jobs", "30", "--crash-at-record", "45", "--crash-model", "power-loss"]
    s = run_json(capsys, *argv, "--export", str(dest), "--export-crash", "1", "--json")
    verify = run_json(capsys, "wal", "verify", "--data-dir", str(dest), "--json")
    recovered = s["recovery"]["records_replayed"] + s["recovery"]["snapshot_seq"]
    assert verify["ok"] and verify["last_seq"] == recovered
    assert verify["end_lsn"] == s["crash"]["durable_lsn"]  # a power loss keeps what was fsynced
    assert s["export"]["after_crash"] == 1


def test_preallocated_segments_keep_their_length(tmp_path: Path) -> None:
    config = Config(data_dir="/run", wal_preallocate="fallocate", segment_bytes=1 << 16)
    result = Simulation(config, Workload(jobs=5)).run()
    files = export(result.fs, "/run", str(tmp_path / "d"))
    segment = next(f for f in files if f.startswith("wal/"))
    assert (tmp_path / "d" / segment).stat().st_size == 1 << 16


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--export-crash", "1"], "--export-crash needs --export DIR"),
        (["--export", "{dir}", "--export-crash", "2", "--crash-at-record", "9"], "plans 1 crash(es)"),
        (["--export", "{file}"], "exists and is not an empty directory"),
        (["--export", "{full}"], "exists and is not an empty directory"),
    ],
)
def test_a_bad_destination_is_one_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("keep")
    paths = {"dir": str(tmp_path / "new"), "file": str(tmp_path / "file"), "full": str(tmp_path / "full")}
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["sim", "--jobs", "3", *[e.format(**paths) for e in extra]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "full" / "keep").read_text() == "keep"

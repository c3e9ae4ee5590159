"""`beaver wal verify | dump | repair` read a data directory the way recovery does: after
checkpoints have deleted old segments, the log starts after the oldest kept snapshot, and that is
not damage. Repair prints its plan (what it cuts and what that loses) and changes nothing without
--yes; on a healthy directory it is a no-op. Run on real files through the CLI, and on every
directory a crash during checkpoints can leave (SimFS, every crash model)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from beaver_sim.cli import main
from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import apply_repair, inspect, plan_repair
from beaver_sim.sim.fs import METADATA_FIRST, POWER_LOSS, PROCESS, TORN_BLOCKS, SimFS
from beaver_sim.storage.fs import RealFS
from tests.property.test_checkpoint_crash import CHECKPOINT, execute, workload

pytestmark = pytest.mark.usefixtures("clean_env")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


LATE = 8


def compacted(root: Path, jobs: int = 40, rounds: int = 3) -> Path:
    """A data directory after several checkpoints: segments before the oldest kept snapshot are
    gone, and a few records were logged after the newest one (as `beaver run` leaves it)."""
    s = Storage.open(RealFS(), str(root), segment_bytes=400)
    n = 0
    for r in range(rounds):
        for _ in range(jobs):
            job = f"j{n}"
            s.append(R.enqueue(job, {"round": r}))
            s.append(R.dispatch(job, 1, 0, 1.0))
            s.append(R.ack(job, 1))
            s.wal.flush()  # one event-loop turn per job: segments rotate at segment_bytes
            n += 1
        s.wal.flush()
        s.checkpoint()
    for i in range(LATE):  # after the newest snapshot, over several segments; the last is not run
        s.append(R.enqueue(f"late-{i}", {}))
        if i < LATE - 1:
            s.append(R.dispatch(f"late-{i}", 1, 0, 1.0))
            s.append(R.ack(f"late-{i}", 1))
        s.wal.flush()
    s.wal.flush()
    s.wal._file.close()  # as after kill -9: no clean close, no last snapshot
    return root


def test_a_compacted_directory_verifies_dumps_and_needs_no_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = compacted(tmp_path / "d")
    assert not (d / "wal" / "wal-00000000000000000001.log").exists()  # compaction deleted it
    args = ["--data-dir", str(d)]
    assert main(["wal", "verify", *args]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "are in snapshot" in out
    assert main(["wal", "verify", "--json", *args]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["snapshot_seq"] == 360 and summary["first_seq"] > 1
    assert main(["wal", "dump", "--json", *args]) == 0
    captured = capsys.readouterr()
    dumped = [orjson.loads(line) for line in captured.out.splitlines()]
    assert dumped[0]["seq"] == summary["first_seq"] and dumped[-1]["job"] == f"late-{LATE - 1}"
    assert "the log starts at seq" in captured.err
    before = tree(d)
    for extra in ([], ["--yes"]):
        assert main(["wal", "repair", *extra, *args]) == 0
        assert "nothing to repair" in capsys.readouterr().out
    assert tree(d) == before
    state = Storage.open(RealFS(), str(d)).state
    assert state.stats()["completed"] == 120 + LATE - 1 and state.stats()["pending"] == 1


def enqueued_in(paths: list[Path]) -> int:
    return sum(path.read_bytes().count(b'"type":"enqueue"') for path in paths)


def test_a_segment_the_snapshot_covers_may_go_but_a_later_one_may_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = compacted(tmp_path / "d")
    args = ["--data-dir", str(d)]
    segments = sorted((d / "wal").glob("wal-*.log"))
    assert int(segments[1].name[4:24]) <= 360  # covered by the newest snapshot (seq 360)
    segments[1].unlink()
    assert main(["wal", "verify", *args]) == 0
    capsys.readouterr()
    segments = sorted((d / "wal").glob("wal-*.log"))
    assert int(segments[-3].name[4:24]) > 361  # only in the log
    gone = enqueued_in([segments[-3]])
    segments[-3].unlink()
    assert main(["wal", "verify", *args]) == 1
    assert "corruption" in capsys.readouterr().out
    before = tree(d)
    assert main(["wal", "repair", "--json", *args]) == 1
    plan = orjson.loads(capsys.readouterr().out)["plan"]
    lost = enqueued_in(segments[-2:])
    assert lost > 0 and plan["jobs_lost"] == lost and plan["refused"] is None
    assert plan["moved_aside"] == [str(segments[-1])]
    assert main(["wal", "repair", *args]) == 1
    out = capsys.readouterr().out
    assert f"loses {lost} acknowledged job(s)" in out and "nothing changed" in out
    assert tree(d) == before  # a plan changes nothing
    assert main(["wal", "repair", "--yes", *args]) == 0
    assert "backups" in capsys.readouterr().out
    assert main(["wal", "verify", *args]) == 0
    capsys.readouterr()
    state = Storage.open(RealFS(), str(d)).state
    assert len(state.jobs) == 120 + LATE - gone - lost  # exactly what the plan said


def test_every_segment_missing_after_a_snapshot_restarts_the_log_after_it(tmp_path: Path) -> None:
    d = compacted(tmp_path / "d")
    fs = RealFS()
    for seg in (d / "wal").glob("wal-*.log"):
        seg.unlink()
    plan = plan_repair(fs, str(d / "wal"), str(d / "snap"))
    assert plan is not None and plan.refused  # no segment at all: nothing to cut
    d2 = compacted(tmp_path / "d2")
    first = sorted((d2 / "wal").glob("wal-*.log"))[0]
    first.write_bytes(b"garbage\n" + first.read_bytes())  # the first segment's header is unreadable
    plan = plan_repair(fs, str(d2 / "wal"), str(d2 / "snap"))
    assert plan is not None and plan.covered and plan.jobs_lost == 0  # the snapshot holds its records
    assert apply_repair(fs, str(d2 / "wal"), plan) == [str(first) + ".removed"]
    assert len(Storage.open(fs, str(d2)).state.jobs) == 120 + LATE
    d3 = compacted(tmp_path / "d3")
    segments = sorted((d3 / "wal").glob("wal-*.log"))
    lost = enqueued_in([seg for seg in segments if int(seg.name[4:24]) > 360])
    for seg in segments:
        seg.write_bytes(b"garbage\n" + seg.read_bytes())
    steps = []  # one step per run, as `beaver wal repair` shows and does them
    while (plan := plan_repair(fs, str(d3 / "wal"), str(d3 / "snap"))) is not None:
        steps.append((plan.covered, plan.jobs_lost))
        apply_repair(fs, str(d3 / "wal"), plan)
    covered = sum(1 for seg in segments if int(seg.name[4:24]) <= 360)
    assert steps == [(True, 0)] * covered + [(False, lost)] and lost == LATE
    state = Storage.open(fs, str(d3)).state  # the log restarts after the snapshot
    assert len(state.jobs) == 120 and state.last_seq == 360


def flip(path: Path, line: int) -> None:
    """Change one byte in the body of record `line` (0 is the header): corruption, not a torn tail."""
    lines = path.read_bytes().split(b"\n")
    lines[line] = lines[line][:-3] + (b"0" if lines[line][-3:-2] != b"0" else b"1") + lines[line][-2:]
    path.write_bytes(b"\n".join(lines))


def test_damage_only_a_snapshot_covers_is_set_aside_without_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = compacted(tmp_path / "d")
    first = sorted((d / "wal").glob("wal-*.log"))[0]
    flip(first, 2)
    args = ["--data-dir", str(d)]
    assert main(["wal", "verify", *args]) == 1
    capsys.readouterr()
    assert main(["wal", "repair", *args]) == 1
    assert "loses nothing" in capsys.readouterr().out
    assert main(["wal", "repair", "--yes", *args]) == 0
    capsys.readouterr()
    assert (first.parent / (first.name + ".removed")).exists()
    assert main(["wal", "verify", *args]) == 0
    assert len(Storage.open(RealFS(), str(d)).state.jobs) == 120 + LATE


def test_damage_before_a_snapshot_inside_a_segment_it_ends_in_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = compacted(tmp_path / "d")
    s = Storage.open(RealFS(), str(d), segment_bytes=1 << 20)
    for i in range(4):
        s.append(R.enqueue(f"more-{i}", {}))
    s.wal.flush()
    s.save_snapshot()  # a snapshot in the middle of the last segment (no rotation)
    s.append(R.enqueue("after", {}))
    s.close()
    last = sorted((d / "wal").glob("wal-*.log"))[-1]
    flip(last, len(last.read_bytes().split(b"\n")) - 4)  # covered by that snapshot, then good records
    before = tree(d)
    assert main(["wal", "repair", "--yes", "--data-dir", str(d)]) == 2
    assert "no safe repair" in capsys.readouterr().err
    assert tree(d) == before


def test_a_torn_tail_verifies_and_is_left_to_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = compacted(tmp_path / "d")
    last = sorted((d / "wal").glob("wal-*.log"))[-1]
    with last.open("ab") as f:
        f.write(b'0badc0de 99 {"seq":')
    args = ["--data-dir", str(d)]
    assert main(["wal", "verify", *args]) == 0
    assert "torn write" in capsys.readouterr().out
    before = tree(d)
    assert main(["wal", "repair", "--yes", *args]) == 0
    assert tree(d) == before


# every crash model, power-loss also keeping a torn tail (torn-blocks chooses its own blocks)
MODELS = ((PROCESS, 0), (POWER_LOSS, 0), (POWER_LOSS, 33), (METADATA_FIRST, 0), (TORN_BLOCKS, 0))


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_every_directory_a_checkpointing_crash_leaves_verifies_and_needs_no_repair(fsync: str) -> None:
    """A crash at every FS call of a run with checkpoints, segment deletion and snapshot pruning,
    under every crash model (power-loss also keeping a torn tail): `verify` passes and `repair`
    has nothing to do, before recovery and after it."""
    plan = workload(4, n_records=30, every=6)
    assert plan.count(CHECKPOINT) >= 4
    _, full = execute(plan, fsync, None, 0)
    checked = 0
    for crash_at in range(full.events + 1):
        fs, _ = execute(plan, fsync, crash_at, 1 << 20 if crash_at % 2 else 7)
        for model, torn in MODELS:
            survivor = fs.after_crash(model, torn)
            found = inspect(survivor, "/data/wal", "/data/snap", check_snapshots=True)
            where = f"crash at {crash_at}, {model} torn={torn}: {found.problem}"
            assert found.ok and not found.broken_snapshots, where
            assert plan_repair(survivor, "/data/wal", "/data/snap") is None, where
            s = Storage.open(survivor, "/data", fsync=fsync, segment_bytes=1500)
            assert s.state.to_state() == found.state.to_state(), where  # verify reads what recovery reads
            s.close()
            again = inspect(survivor, "/data/wal", "/data/snap")
            assert again.problem is None and plan_repair(survivor, "/data/wal", "/data/snap") is None, where
            checked += 1
    assert checked >= len(MODELS) * 100


def test_inspection_changes_nothing() -> None:
    fs = SimFS()
    s = Storage.open(fs, "/data")
    s.append(R.enqueue("a", {}))
    s.wal.flush()
    calls: list[str] = []

    def record(op: str, path: str, n: int) -> int | None:
        calls.append(op)
        return None

    fs.hook = record  # SimFS calls the hook before every changing call (reads do not reach it)
    found = inspect(fs, "/data/wal", "/data/snap", check_snapshots=True)
    assert plan_repair(fs, "/data/wal", "/data/snap") is None
    assert found.ok and found.state.stats()["pending"] == 1
    assert calls == []


def test_strict_recovery_makes_a_whole_damaged_last_record_a_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flipped bit in the last record, which ends with its newline: by default `wal verify`
    calls it a torn tail (recovery cuts it); with `wal_recovery: strict` verify says recovery would
    refuse, and `wal repair --yes` cuts it with a backup, after which strict recovery starts."""
    d = compacted(tmp_path / "d")
    storage = Storage.open(RealFS(), str(d))
    storage.append(R.enqueue("last", {"n": 7}))
    storage.wal.close()  # synced: "last" would have been acknowledged
    last = sorted((d / "wal").glob("wal-*.log"))[-1]
    data = bytearray(last.read_bytes())
    data[data.rindex(b'"n":7') + 4] ^= 0x01  # 7 -> 6: the line still parses, its CRC fails
    last.write_bytes(bytes(data))
    args = ["--data-dir", str(d)]
    assert main(["wal", "verify", *args]) == 0
    assert "torn write" in capsys.readouterr().out
    monkeypatch.setenv("BEAVER_WAL_RECOVERY", "strict")
    assert main(["wal", "verify", *args]) == 1
    assert "whole last record (wal_recovery: strict)" in capsys.readouterr().out
    assert main(["status", *args]) == 2  # an offline status reads the directory as strict recovery would
    assert "wal_recovery: strict" in capsys.readouterr().err
    assert main(["wal", "repair", "--yes", *args]) == 0
    capsys.readouterr()
    assert main(["wal", "verify", *args]) == 0
    Storage.open(RealFS(), str(d), wal_recovery="strict").close()

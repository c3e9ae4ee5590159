"""Issue 17: `wal verify` ok <=> `beaver run` opens. verify replays through the same `apply` and the
same recorded configuration as recovery, so a record that checksums but that recovery cannot apply
is reported (non-zero, naming file, offset and seq), and `wal repair` plans around it; its counts
come only from records that verify, never from the damaged one read as if it were good."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from beaver_sim.cli import main
from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.errors import CorruptLog
from beaver_sim.storage.fs import RealFS
from beaver_sim.storage.wal import WriteAheadLog

pytestmark = pytest.mark.usefixtures("clean_env")


def raw_log(d: Path, recs: list[R.Record]) -> None:
    """Write `recs` with good checksums through the WAL alone: no `apply` judges them."""
    wal, _, _ = WriteAheadLog.open(RealFS(), str(d / "wal"))
    for rec in recs:
        wal.append(rec)
    wal.close()


def test_a_record_recovery_cannot_apply_fails_verify_and_repair_cuts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "d"
    raw_log(d, [R.enqueue("a", {}), R.enqueue("b", {}), R.enqueue("a", {"x": 1}), R.enqueue("c", {})])
    with pytest.raises(CorruptLog, match="job 'a': cannot enqueue when state=pending"):
        Storage.open(RealFS(), str(d))
    args = ["--data-dir", str(d)]
    assert main(["wal", "verify", "--json", *args]) == 1
    problem = orjson.loads(capsys.readouterr().out)["problem"]
    assert problem["after_seq"] == 2 and not problem["torn_tail"] and problem["path"].endswith(".log")
    assert "duplicate id" in problem["reason"] and problem["offset"] > 0
    assert main(["wal", "repair", "--json", *args]) == 1
    plan = orjson.loads(capsys.readouterr().out)["plan"]
    assert plan["cut"]["after_seq"] == 2 and plan["records_dropped"] == {"enqueue": 2}
    assert plan["jobs_lost"] == 2 and plan["unreadable_lines"] == 0
    assert main(["wal", "repair", "--yes", *args]) == 0
    capsys.readouterr()
    assert main(["wal", "verify", *args]) == 0
    assert set(Storage.open(RealFS(), str(d)).state.jobs) == {"a", "b"}


def test_a_malformed_record_that_checksums_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "d"
    raw_log(d, [R.enqueue("a", {}), {"seq": 0, "type": R.DISPATCH, "job": "a"}, R.config(-3)])
    with pytest.raises(CorruptLog, match=r"record seq 2 \(dispatch\) is malformed"):
        Storage.open(RealFS(), str(d))
    assert main(["wal", "verify", "--data-dir", str(d)]) == 1
    assert "malformed" in capsys.readouterr().out


def test_repair_counts_only_records_that_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged ENQUEUE whose body is still valid JSON (one letter of its id changed) is one line
    that does not verify: not a job lost under a name it never had. The records after it verify
    against the CRC it claims and are counted exactly."""
    d = tmp_path / "d"
    recs = [R.enqueue(f"j{i}", {}) for i in range(10)] + [R.ack("j0", 1)]
    raw_log(d, recs)
    seg = next((d / "wal").glob("wal-*.log"))
    data = seg.read_bytes()
    at = data.index(b'"job":"j3"')
    seg.write_bytes(data[: at + 8] + b"X" + data[at + 9 :])  # "j3" -> "X3": valid JSON, bad CRC
    assert main(["wal", "repair", "--json", "--data-dir", str(d)]) == 1
    plan = orjson.loads(capsys.readouterr().out)["plan"]
    assert plan["cut"]["after_seq"] == 3 and plan["unreadable_lines"] == 1
    assert plan["jobs_lost"] == 6 and plan["records_dropped"] == {"ack": 1, "enqueue": 6}  # j4..j9

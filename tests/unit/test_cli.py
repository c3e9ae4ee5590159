"""The CLI in-process: every user error is one stderr line and a non-zero exit, and a refused
enqueue writes nothing (the data directory's bytes are unchanged); --help everywhere; status and
wal verify / dump / repair on real files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.cli import build_parser, main
from beaver_sim.runtime.lock import DataDirLock

pytestmark = pytest.mark.usefixtures("clean_env")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def job_file(tmp_path: Path, content: Any, name: str = "jobs.json") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    return str(path)


def one_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A data directory that already holds jobs a and b."""
    good = job_file(
        tmp_path, [{"id": "a", "payload": {"type": "noop"}}, {"id": "b", "payload": {}}], "good.json"
    )
    assert main(["enqueue", "--create", "--file", good, "--data-dir", str(tmp_path / "d")]) == 0
    assert "enqueued 2 jobs" in capsys.readouterr().out
    return tmp_path / "d"


BAD_FILES = [
    (b'[{"id": "x", "payload": {}', "not valid JSON"),
    (b"", "not valid JSON"),
    ({"id": "x", "payload": {}}, "expected a JSON list"),
    (["x"], "job #1: expected an object"),
    ([{"payload": {}}], "job #1: missing id"),
    ([{"id": "x"}], "job #1: missing payload"),
    ([{"id": 7, "payload": {}}], "job #1: id must be a non-empty string"),
    ([{"id": "", "payload": {}}], "job #1: id must be a non-empty string"),
    ([{"id": "x", "payload": [1]}], "job #1 (x): payload must be an object"),
    ([{"id": "x", "payload": {}, "prio": 1}], "job #1: unknown field 'prio'"),
    (
        [{"id": "x", "payload": {"n": 1}}, {"id": "x", "payload": {"n": True}}],
        "job #2: id 'x' appears earlier in the file with a different payload",
    ),
    (
        [{"id": "new", "payload": {}}, {"id": "b", "payload": {"other": 1}}],
        "job id 'b' is already enqueued with a different payload",
    ),
]


@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_a_bad_job_file_is_one_line_and_writes_nothing(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], content: Any, problem: str
) -> None:
    before = tree(data_dir)
    path = job_file(tmp_path, content)
    assert main(["enqueue", "--file", path, "--data-dir", str(data_dir)]) == 2
    one_error(capsys, "beaver enqueue: error:", path, problem)
    assert tree(data_dir) == before


def test_sending_the_same_file_again_is_accepted_as_already_present(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retry after a lost answer or a half-written batch: the known jobs are already present,
    the rest are new; an id repeated with its payload in one file is one job; nothing is logged twice."""
    jobs = [{"id": "b", "payload": {}}, {"id": "a", "payload": {"type": "noop"}}, {"id": "c", "payload": {}}]
    path = job_file(tmp_path, [*jobs, jobs[2]])
    assert main(["enqueue", "--json", "--file", path, "--data-dir", str(data_dir)]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer == {"file": path, "new": 1, "already_present": 2, "durable": True}
    before = tree(data_dir)
    assert main(["enqueue", "--file", path, "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "enqueued 3 jobs" in out and "0 new, 3 already present; durable" in out
    assert tree(data_dir) == before  # nothing new was logged
    assert main(["status", "--json", "--data-dir", str(data_dir)]) == 0
    assert orjson.loads(capsys.readouterr().out)["jobs"] == 3


def test_a_bad_job_file_does_not_create_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = job_file(tmp_path, [{"id": "x"}])
    assert main(["enqueue", "--file", path, "--data-dir", str(tmp_path / "new")]) == 2
    one_error(capsys, "missing payload")
    assert not (tmp_path / "new").exists()


def test_a_missing_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", "--file", str(tmp_path / "nope.json"), "--data-dir", str(tmp_path / "d")]) == 2
    one_error(capsys, "nope.json: cannot read")


@pytest.mark.parametrize(
    ("argv", "env", "yaml", "problem"),
    [
        (["run", "--workers", "0"], {}, None, "flag --workers: worker_count must be >= 1"),
        (["run", "--timeout", "3x"], {}, None, "flag --timeout: task_timeout: '3x' is not a duration"),
        (["run", "--fsync", "maybe"], {}, None, "fsync must be one of"),
        (["run"], {"BEAVER_FAILURE_RATE": "1.5"}, None, "environment BEAVER_FAILURE_RATE: failure_rate"),
        (["run"], {}, "max_retry: 0\n", "c.yaml: max_retry must be >= 1"),
        (["enqueue", "--file", "F"], {}, "bogus: 1\n", "c.yaml: unknown key 'bogus'"),
        (["status"], {}, "task_timeout: [\n", "c.yaml: invalid YAML"),
    ],
)
def test_a_bad_config_is_one_line_and_writes_nothing(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    yaml: str | None,
    problem: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = [job_file(tmp_path, [{"id": "z", "payload": {}}]) if a == "F" else a for a in argv]
    if yaml is not None:
        (tmp_path / "c.yaml").write_text(yaml)
        argv += ["--config", str(tmp_path / "c.yaml")]
    before = tree(data_dir)
    assert main([*argv, "--data-dir", str(data_dir)]) == 2
    one_error(capsys, problem)
    assert tree(data_dir) == before


def test_run_refuses_a_locked_data_dir_naming_the_holder(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with DataDirLock(str(data_dir)):
        assert main(["run", "--data-dir", str(data_dir), "--metrics-port", "0"]) == 2
    one_error(capsys, f"PID {os.getpid()}", "locked")


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["enqueue"])
    assert exit_.value.code == 2
    one_error(capsys, "--file", "see --help")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["enqueue"],
        ["status"],
        ["demo"],
        ["wal"],
        ["wal", "verify"],
        ["wal", "dump"],
        ["wal", "repair"],
    ],
)
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: beaver" in capsys.readouterr().out


def test_status_without_a_controller(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json", "--data-dir", str(data_dir)]) == 0
    st = orjson.loads(capsys.readouterr().out)
    assert {k: st[k] for k in ("pending", "in_flight", "completed", "dead", "last_seq")} == {
        "pending": 2,
        "in_flight": 0,
        "completed": 0,
        "dead": 0,
        "last_seq": 2,
    }
    assert st["running"] is False
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    assert "not running" in capsys.readouterr().out


def test_status_of_a_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--data-dir", str(tmp_path / "none")]) == 2
    one_error(capsys, "no such data directory")


def test_wal_verify_dump_and_repair(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    assert main(["wal", "verify", *d]) == 0
    assert "ok: 2 records" in capsys.readouterr().out
    assert main(["wal", "dump", "--json", *d]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["seq"], r["type"], r["job"]) for r in lines] == [(1, "enqueue", "a"), (2, "enqueue", "b")]
    segment = next((data_dir / "wal").glob("wal-*.log"))
    data = segment.read_bytes()
    for rec in lines:  # the LSN is the record's byte offset in the log (one segment, base LSN 0)
        assert orjson.loads(data[rec["lsn"] :].split(b"\n", 1)[0].split(b" ", 2)[2])["job"] == rec["job"]
    # corrupt the first record; the second stays valid, so this is corruption, not a torn tail
    first = lines[0]["lsn"]
    segment.write_bytes(data[: first + 20] + b"X" + data[first + 21 :])
    assert main(["wal", "verify", *d]) == 1
    assert "corruption" in capsys.readouterr().out
    assert main(["status", *d]) == 2
    one_error(capsys, "beaver wal verify")
    before = tree(data_dir)
    assert main(["wal", "repair", *d]) == 1  # the plan only: what the cut loses, nothing changed
    out = capsys.readouterr().out
    assert "loses 1 acknowledged job(s)" in out and "--yes" in out
    assert tree(data_dir) == before
    assert main(["wal", "repair", "--yes", *d]) == 0
    assert "bytes dropped" in capsys.readouterr().out
    assert main(["wal", "repair", *d]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert main(["wal", "verify", *d]) == 0
    assert "ok: 0 records" in capsys.readouterr().out
    assert (segment.parent / (segment.name + ".broken")).read_bytes()[first + 20 : first + 21] == b"X"
    assert main(["wal", "dump", *d]) == 0
    assert capsys.readouterr().out == ""


def test_a_100000_job_file_is_one_durable_batch_and_odd_ids_print_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = [
        "tab\tid",
        "new\nline",
        "rtl\u202eevil",
        "emoji-🦫",
        "nul\x00byte",
        "quote\"'",
        "../../escape",
        "/abs",
    ]
    ids = odd + [f"j{i}" for i in range(100_000 - len(odd))]
    path = job_file(tmp_path, [{"id": i, "payload": {"n": n}} for n, i in enumerate(ids)])
    d = ["--data-dir", str(tmp_path / "d")]
    assert main(["enqueue", "--create", "--file", path, *d]) == 0
    assert "enqueued 100000 jobs" in capsys.readouterr().out
    assert main(["wal", "dump", *d]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 100_000  # one line per record: no id breaks a line
    assert "\t" not in out and "\u202e" not in out and "\x00" not in out
    assert repr("rtl\u202eevil") in lines[2] and "emoji-🦫" in lines[3] and "../../escape" in lines[6]
    assert main(["wal", "dump", "--json", *d]) == 0
    dumped = [orjson.loads(line)["job"] for line in capsys.readouterr().out.splitlines()[: len(odd)]]
    assert dumped == odd  # stored exactly
    names = {p.name for p in (tmp_path / "d").rglob("*")}  # a job id never builds a path
    assert names == {"LOCK", "wal", "snap", "wal-00000000000000000001.log"}, names
    assert not (tmp_path.parent / "escape").exists()

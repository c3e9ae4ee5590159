"""The graded labs: each reference solution in the committed notebooks passes its check, each learner
version is reported as not implemented, and each check catches the broken versions the durability
mutants stand for, naming the invariant they break."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from crc32c import crc32c

from beaver_sim import labs
from beaver_sim.core.records import apply
from beaver_sim.core.types import BeaverError
from beaver_sim.sim import mutants

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks" / "labs"
LAB_OF = {"lab1-wal": "wal", "lab2-snapshot": "snapshot", "lab3-replay": "replay", "lab4-retry": "retry"}


def learner_function(notebook: Path, student: bool) -> Callable[..., Any]:
    """The lab's function as the notebook defines it (the reference solution, or the learner
    version `make student` writes): its cells run up to the one with the solution markers."""
    nb = json.loads(notebook.read_text())
    namespace: dict[str, Any] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        solution = "# BEGIN SOLUTION" in source
        exec(labs.student_source(source) if student else source, namespace)
        if solution:
            return namespace[labs.LABS[LAB_OF[notebook.stem]].function]
    raise AssertionError(f"{notebook}: no cell with a solution")


def test_there_is_a_notebook_for_every_lab() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(LAB_OF)
    assert sorted(LAB_OF.values()) == sorted(labs.LABS)


@pytest.mark.parametrize("name", sorted(LAB_OF))
def test_the_reference_solution_passes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    lab = LAB_OF[name]
    result = labs.check(lab, learner_function(NOTEBOOKS / f"{name}.ipynb", student=False), plot=False)
    out = capsys.readouterr().out
    assert result.passed and result.first is None, out
    assert out.startswith("PASS: ") and f"all {len(result.sweep)} crash points" in out
    assert len(result.sweep) > 100  # a real sweep, not a handful of points


@pytest.mark.parametrize("name", sorted(LAB_OF))
def test_the_learner_version_says_not_implemented(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    fn = learner_function(NOTEBOOKS / f"{name}.ipynb", student=True)
    assert fn.__doc__  # the signature and docstring stay
    result = labs.check(LAB_OF[name], fn, plot=False)
    out = capsys.readouterr().out
    assert result.not_implemented and not result.passed
    assert out == (
        f"{fn.__name__}: not implemented yet. Replace `raise NotImplementedError` with your code "
        "and run the check again.\n"
    )


# -- the broken versions: each one is a mutant's mistake, written as the learner's function ---------


def append_no_sync(f: Any, body: bytes, prev_crc: int) -> int:
    """mutants.NoFsyncFS: written, never synced."""
    crc = crc32c(body, prev_crc)
    f.write(b"%08x %d %s\n" % (crc, len(body), body))
    return crc


def append_no_checksum(f: Any, body: bytes, prev_crc: int) -> int:
    """mutants.NoChecksumWAL: a zero checksum."""
    f.write(b"00000000 %d %s\n" % (len(body), body))
    f.sync()
    return 0


def append_sync_first(f: Any, body: bytes, prev_crc: int) -> int:
    """Syncs before the write: the record is durable only with the next one."""
    crc = crc32c(body, prev_crc)
    f.sync()
    f.write(b"%08x %d %s\n" % (crc, len(body), body))
    return crc


def _tmp(fs: Any, directory: str, name: str, data: bytes, sync: bool) -> str:
    path = posixpath.join(directory, name)
    f = fs.create(path + ".tmp")
    f.write(data)
    if sync:
        f.sync()
    f.close()
    fs.replace(path + ".tmp", path)
    return path


def snapshot_seed(fs: Any, directory: str, name: str, data: bytes) -> None:
    """The seed's WriteFile + Rename, no fsync."""
    _tmp(fs, directory, name, data, sync=False)


def snapshot_no_dir_sync(fs: Any, directory: str, name: str, data: bytes) -> None:
    """mutants.NoDirFsyncFS, for the snapshot: the rename is atomic, not durable."""
    _tmp(fs, directory, name, data, sync=True)


def snapshot_no_file_sync(fs: Any, directory: str, name: str, data: bytes) -> None:
    """The name is durable, the bytes behind it are not."""
    _tmp(fs, directory, name, data, sync=False)
    fs.sync_dir(directory)


def snapshot_in_place(fs: Any, directory: str, name: str, data: bytes) -> None:
    """mutants.InPlaceSnapshots' one file, overwritten: not where the store looks for it."""
    f = fs.create(posixpath.join(directory, "snapshot.json"))
    f.write(data)
    f.sync()
    f.close()
    fs.sync_dir(directory)


def retry_seed(attempt: int, max_retry: int, reason: str) -> str:
    """mutants.NoTimeoutLimitController: only failures count."""
    if reason == "timeout":
        return "retry"
    return "dead" if attempt >= max_retry else "retry"


def retry_never_after_timeout(attempt: int, max_retry: int, reason: str) -> str:
    """Gives up at the first timeout."""
    return "dead" if reason == "timeout" or attempt >= max_retry else "retry"


BROKEN = [  # (lab, function, invariant of the first counterexample, its detail)
    ("wal", append_no_sync, 1, r"acknowledged, but missing after recovery"),
    ("wal", append_no_checksum, 5, r"the log does not verify: .*checksum mismatch"),
    ("wal", append_sync_first, 6, r"recovery refused to start: .*synced records were lost"),
    ("snapshot", snapshot_seed, 6, r"recovery refused to start: .*records 1\.\.\d+ are missing"),
    ("snapshot", snapshot_no_dir_sync, 6, r"recovery refused to start: .*records 1\.\.\d+ are missing"),
    ("snapshot", snapshot_no_file_sync, 6, r"recovery refused to start: .*records 1\.\.\d+ are missing"),
    (
        "replay",
        mutants.replay_without_completed_check,
        3,
        r"its ACK was durable, but after recovery it is pending",
    ),
    ("replay", apply, 6, r"recovery refused to start: .*is not after the state's last seq"),
    ("retry", retry_seed, 4, r"[4-9] attempts; max_retry is 3"),
    ("retry", retry_never_after_timeout, 4, r"dead after 1 attempts; max_retry is 3"),
]


@pytest.mark.parametrize(("lab", "fn", "invariant", "detail"), BROKEN, ids=[b[1].__name__ for b in BROKEN])
def test_the_check_catches_the_mistake(
    lab: str, fn: Callable[..., Any], invariant: int, detail: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = labs.check(lab, fn, plot=False)
    out = capsys.readouterr().out
    assert not result.passed and not result.not_implemented and result.first is not None
    first = result.first
    assert (first["invariant"], re.search(detail, first["detail"]) is not None) == (invariant, True), first
    assert out.startswith(f"FAIL: {fn.__name__} broke an invariant")
    assert f"invariant {invariant}: " in out and first["token"] in out and first["crash"] in out
    assert (result.sweep["violations"] > 0).any() or first["point"] < 0
    again = labs.replay(lab, fn, first["token"])  # the token reproduces the failure
    assert any(v.invariant == invariant for v in again.violations)
    assert f"lab-{lab}" not in mutants.MUTANTS  # registered only while the check ran


def test_a_check_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    labs.check("wal", append_no_sync, plot=False)
    first = capsys.readouterr().out
    labs.check("wal", append_no_sync, plot=False)
    assert capsys.readouterr().out == first
    assert "crash point" in first and "job: task-" in first


def test_a_counterexample_comes_with_a_picture(capsys: pytest.CaptureFixture[str]) -> None:
    plt.close("all")
    labs.check("snapshot", snapshot_seed)
    labs.check("retry", retry_seed)  # too many attempts with no crash: the attempts of that run
    labs.check("wal", append_no_checksum)  # broken with no crash: every point fails
    titles = [plt.figure(n).axes[0].get_title() for n in plt.get_fignums()]
    plt.close("all")
    assert titles == [
        "snapshot_seed: outcome of each crash point along the WAL",
        "retry_seed: attempts per job in the run without a crash",
        "append_no_checksum: outcome of each crash point along the WAL",
    ]


def test_a_broken_contract_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Mistakes a sweep cannot grade: a value that is not an answer, a snapshot that is not there."""
    cases = [
        (
            "retry",
            lambda attempt, max_retry, reason: "maybe",
            "next_action returned 'maybe'; it must return one of retry, dead",
        ),
        (
            "wal",
            lambda f, body, prev_crc: None,
            "append_record returned None; it must return the record's CRC (an int)",
        ),
        (
            "snapshot",
            snapshot_in_place,
            "write_snapshot returned, but /data/snap/snap-00000000000000000028.json does not hold "
            "the snapshot it was given",
        ),
    ]
    for lab, fn, message in cases:
        result = labs.check(lab, fn)
        assert (result.passed, result.error) == (False, message)
        assert capsys.readouterr().out == f"FAIL: {message}\n"
    assert not [name for name in mutants.MUTANTS if name.startswith("lab-")]
    with pytest.raises(BeaverError, match="unknown lab 'nope'; known: wal, snapshot, replay, retry"):
        labs.check("nope", apply)


# -- learner versions ----------------------------------------------------------------------------

SOLVED = '''\
def f(x: int) -> int:
    """Doubles."""
    # BEGIN SOLUTION
    y = x * 2
    return y
    # END SOLUTION


class A:
    def g(self) -> None:
        """Nothing."""
        # BEGIN SOLUTION
        pass
        # END SOLUTION
print(f(2))
'''


def test_student_source_keeps_signature_and_docstring() -> None:
    assert labs.student_source(SOLVED) == (
        'def f(x: int) -> int:\n    """Doubles."""\n    raise NotImplementedError\n\n\n'
        'class A:\n    def g(self) -> None:\n        """Nothing."""\n        raise NotImplementedError\n'
        "print(f(2))\n"
    )
    assert labs.student_source("x = 1\n") == "x = 1\n"


def test_make_student_writes_learner_notebooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert labs.main([str(NOTEBOOKS), str(tmp_path / "student")]) == 0
    written = sorted((tmp_path / "student").glob("*.ipynb"))
    assert [p.name for p in written] == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert capsys.readouterr().out.splitlines() == [str(p) for p in written]
    for path in written:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        text = "".join("".join(c["source"]) for c in code)
        assert "SOLUTION" not in text and text.count("raise NotImplementedError") == 1
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        original = json.loads((NOTEBOOKS / path.name).read_text())
        assert [c["source"] for c in nb["cells"] if c["cell_type"] == "markdown"] == [
            c["source"] for c in original["cells"] if c["cell_type"] == "markdown"
        ]


def test_make_student_rejects_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert labs.main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'nope'}: not a directory\n"
    assert not (tmp_path / "out").exists()
    assert labs.main([]) == 2

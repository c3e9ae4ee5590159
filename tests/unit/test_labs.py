"""The graded labs: each reference solution in the committed notebooks passes its check, each learner
version is reported as not implemented, and each check catches the broken versions the durability
mutants stand for, naming the invariant they break."""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from crc32c import crc32c

from beaver_sim import labs
from beaver_sim.core import records as R
from beaver_sim.core.records import apply
from beaver_sim.core.types import BeaverError, IllegalTransition
from beaver_sim.sim import mutants
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.sweep import violations

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks" / "labs"
LAB_OF = {
    "lab1-wal": "wal",
    "lab2-snapshot": "snapshot",
    "lab3-replay": "replay",
    "lab4-retry": "retry",
    "lab5-checkpoint": "checkpoint",
    "lab6-group-commit": "group-commit",
}


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
    models = labs.LABS[lab].models  # one sweep per crash model, of the same points
    assert out.startswith("PASS: ") and f"all {len(result.sweep) * len(models)} crash points" in out
    assert f"({', '.join(models)};" in out and len(result.sweep) > 100  # real sweeps, not a handful


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


# -- the known-wrong answers: each lab's table, with the rule each must be failed for --------------


def append_no_sync(f: Any, body: bytes, prev_crc: int) -> int:
    """The seed's append (mutants.NoFsyncFS): written, never synced."""
    crc = crc32c(body, prev_crc)
    f.write(b"%08x %d %s\n" % (crc, len(body), body))
    return crc


def append_no_checksum(f: Any, body: bytes, prev_crc: int) -> int:
    """A zero checksum."""
    f.write(b"00000000 %d %s\n" % (len(body), body))
    f.sync()
    return 0


def append_sync_first(f: Any, body: bytes, prev_crc: int) -> int:
    """Syncs before the write: each record is acknowledged while it sits unsynced."""
    crc = crc32c(body, prev_crc)
    f.sync()
    f.write(b"%08x %d %s\n" % (crc, len(body), body))
    return crc


def append_unchained(f: Any, body: bytes, prev_crc: int) -> int:
    """Checksums each record on its own."""
    crc = crc32c(body)
    f.write(b"%08x %d %s\n" % (crc, len(body), body))
    f.sync()
    return crc


def append_crc_of_the_line(f: Any, body: bytes, prev_crc: int) -> int:
    """A CRC over the wrong bytes: the length field and the body."""
    line = b"%d %s" % (len(body), body)
    crc = crc32c(line, prev_crc)
    f.write(b"%08x %s\n" % (crc, line))
    f.sync()
    return crc


def append_no_newline(f: Any, body: bytes, prev_crc: int) -> int:
    """Forgets the newline that ends a record."""
    crc = crc32c(body, prev_crc)
    f.write(b"%08x %d %s" % (crc, len(body), body))
    f.sync()
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


def snapshot_rename_before_fsync(fs: Any, directory: str, name: str, data: bytes) -> None:
    """Renames the temporary file over the final name, then syncs it and the directory."""
    path = posixpath.join(directory, name)
    f = fs.create(path + ".tmp")
    f.write(data)
    fs.replace(path + ".tmp", path)
    f.sync()
    f.close()
    fs.sync_dir(directory)


def snapshot_straight_to_the_name(fs: Any, directory: str, name: str, data: bytes) -> None:
    """No temporary file: create, write, sync, sync the directory."""
    f = fs.create(posixpath.join(directory, name))
    f.write(data)
    f.sync()
    f.close()
    fs.sync_dir(directory)


def snapshot_in_place(fs: Any, directory: str, name: str, data: bytes) -> None:
    """mutants.InPlaceSnapshots' one file, overwritten: not where the store looks for it."""
    f = fs.create(posixpath.join(directory, "snapshot.json"))
    f.write(data)
    f.sync()
    f.close()
    fs.sync_dir(directory)


def replay_seed(state: Any, record: dict[str, Any]) -> None:
    """The seed's replay: every record again, those that do not fit skipped."""
    try:
        labs.transition(state, record)
    except (IllegalTransition, KeyError):
        pass
    state.last_seq = max(state.last_seq, record["seq"])


def replay_swallowing(state: Any, record: dict[str, Any]) -> None:
    """Whatever goes wrong, go on."""
    try:
        labs.transition(state, record)
    except Exception:
        pass
    state.last_seq = max(state.last_seq, record["seq"])


def replay_swallowing_apply(state: Any, record: dict[str, Any]) -> None:
    """The strict `apply`, its every error swallowed: a replayed record and damage alike."""
    try:
        apply(state, record)
    except Exception:
        pass


def replay_without_last_seq(state: Any, record: dict[str, Any]) -> None:
    """Skips what the state holds, but never moves last_seq."""
    if record["seq"] > state.last_seq:
        labs.transition(state, record)


@functools.cache
def reference(notebook: str) -> Callable[..., Any]:
    """A lab's reference solution, read from its notebook once."""
    return learner_function(NOTEBOOKS / f"{notebook}.ipynb", student=False)


def end_reference(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """The reference solution of lab 4, as its notebook defines it."""
    return reference("lab4-retry")(job, attempt, max_retry, reason, error)


def end_seed(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """mutants.NoTimeoutLimitController: only failures count."""
    if reason == "timeout":
        return R.timeout(job, attempt)
    return end_reference(job, attempt, max_retry, reason, error)


def end_off_by_one(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """Gives up one attempt too late."""
    return end_reference(job, attempt, max_retry + 1, reason, error)


def end_crash_never_dead(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """An attempt a crash interrupted is always requeued, even the last one allowed."""
    if reason == "interrupted":
        return R.requeue(job, attempt)
    return end_reference(job, attempt, max_retry, reason, error)


def end_dead_at_once(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """No retry at all."""
    return R.dead(job, attempt, reason)


def end_next_attempt(job: str, attempt: int, max_retry: int, reason: str, error: str | None) -> Any:
    """Numbers the record with the attempt to come, not the one that ended."""
    return end_reference(job, attempt + 1, max_retry, reason, error)


def commit_per_record(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """Lab 1's way: a write and an fdatasync per record (durable, below the floor)."""
    for line in lines:
        f.write(line)
        f.sync()
    release()


def commit_writes_per_record(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """One fdatasync per turn, but a write per record (durable, below the floor of writes)."""
    for line in lines:
        f.write(line)
    f.sync()
    release()


def commit_release_first(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """Acknowledges before the fdatasync."""
    f.write(b"".join(lines))
    release()
    f.sync()


def commit_no_sync(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """The seed's log: never synced."""
    f.write(b"".join(lines))
    release()


def commit_sync_first(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """Syncs the turn before, then writes this one."""
    f.sync()
    f.write(b"".join(lines))
    release()


def commit_reversed(f: Any, lines: list[bytes], release: Callable[[], None]) -> None:
    """The turn's records newest first: the CRC chain breaks."""
    f.write(b"".join(reversed(lines)))
    f.sync()
    release()


def _prune(steps: labs.CheckpointSteps) -> int:
    """The reference's pruning: all but the newest `keep` snapshots go; returns the seq through
    which the log may go (the oldest kept, once `keep` exist)."""
    snapshots = steps.snapshots()
    for seq in snapshots[: -steps.keep]:
        steps.delete_snapshot(seq)
    kept = snapshots[-steps.keep :]
    return kept[0] if len(kept) == steps.keep else 0


def checkpoint_snapshot_first(steps: labs.CheckpointSteps) -> None:
    """Snapshot N before the WAL is durable through N."""
    steps.write_snapshot()
    steps.sync_wal()
    steps.rotate_wal()
    steps.delete_segments(_prune(steps))


def checkpoint_without_sync(steps: labs.CheckpointSteps) -> None:
    """No sync before the snapshot at all (the rotation after it syncs, too late)."""
    steps.write_snapshot()
    steps.rotate_wal()
    steps.delete_segments(_prune(steps))


def checkpoint_delete_first(steps: labs.CheckpointSteps) -> None:
    """The segments through N deleted before snapshot N is written."""
    steps.sync_wal()
    steps.rotate_wal()
    steps.delete_segments(steps.seq)
    steps.write_snapshot()
    _prune(steps)


def checkpoint_prune_first(steps: labs.CheckpointSteps) -> None:
    """Makes room first: all but keep - 1 old snapshots deleted (with keep 1: every one), then the
    new one written."""
    steps.sync_wal()
    old = steps.snapshots()
    for seq in old[: len(old) - (steps.keep - 1)]:
        steps.delete_snapshot(seq)
    steps.write_snapshot()
    steps.rotate_wal()
    steps.delete_segments(steps.snapshots()[0])


def checkpoint_segments_first(steps: labs.CheckpointSteps) -> None:
    """The right segments deleted before the old snapshots: a crash between leaves a snapshot
    whose log is gone."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.rotate_wal()
    snapshots = steps.snapshots()
    kept = snapshots[-steps.keep :]
    if len(kept) == steps.keep:
        steps.delete_segments(kept[0])
    for seq in snapshots[: -steps.keep]:
        steps.delete_snapshot(seq)


def checkpoint_never_prunes(steps: labs.CheckpointSteps) -> None:
    """Deletes the segments the newest `keep` cover, never a snapshot."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.rotate_wal()
    kept = steps.snapshots()[-steps.keep :]
    if len(kept) == steps.keep:
        steps.delete_segments(kept[0])


def checkpoint_through_newest(steps: labs.CheckpointSteps) -> None:
    """Deletes the segments snapshot N covers, not those the oldest kept one covers (the same with
    keep 1, the sweeps' setting: only the contract's run with two kept sees it)."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.rotate_wal()
    _prune(steps)
    steps.delete_segments(steps.seq)


def checkpoint_never_compacts(steps: labs.CheckpointSteps) -> None:
    """Snapshots and rotates, deletes nothing: safe, and the log grows for ever."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.rotate_wal()


def checkpoint_no_rotation(steps: labs.CheckpointSteps) -> None:
    """Never rotates: the records N covers stay in the live segment, which is never deleted."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.delete_segments(_prune(steps))


def checkpoint_one_too_many(steps: labs.CheckpointSteps) -> None:
    """Keeps one snapshot more than `keep`, and the log the oldest of them needs: safe, and the
    snapshot directory holds more than the config allows."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.rotate_wal()
    for seq in steps.snapshots()[: -steps.keep - 1]:
        steps.delete_snapshot(seq)
    kept = steps.snapshots()
    if len(kept) >= steps.keep:
        steps.delete_segments(kept[0])


LOG_VERIFIES = "invariant 5 log-order-broken: the log on disk verifies"
SEQS_REUSED = "invariant 5 log-order-broken: sequence numbers"
CONTRACT = "the contract of {}"
WRONG = {  # lab -> (known-wrong answer, the rule its failure must name, the model it fails under)
    "wal": [
        (append_no_sync, "invariant 1 acknowledged-job-lost", "power-loss"),
        (append_sync_first, SEQS_REUSED, "power-loss"),
        (append_unchained, LOG_VERIFIES, "power-loss"),
        (append_crc_of_the_line, LOG_VERIFIES, "power-loss"),
        (append_no_newline, LOG_VERIFIES, "power-loss"),
        (append_no_checksum, LOG_VERIFIES, "power-loss"),
    ],
    "snapshot": [
        (snapshot_seed, "invariant 6 jobs-not-finished", "power-loss"),
        (snapshot_no_dir_sync, "invariant 6 jobs-not-finished", "power-loss"),
        (snapshot_no_file_sync, CONTRACT, "power-loss"),
        (snapshot_rename_before_fsync, CONTRACT, "metadata-first"),
        (snapshot_straight_to_the_name, CONTRACT, "metadata-first"),
    ],
    "replay": [
        (replay_seed, "invariant 3 completed-job-redone", "process"),
        (replay_swallowing, "invariant 3 completed-job-redone", "process"),
        (apply, "invariant 6 jobs-not-finished", "process"),
        (replay_without_last_seq, SEQS_REUSED, "process"),
        (replay_swallowing_apply, CONTRACT, None),
    ],
    "group-commit": [
        (commit_per_record, CONTRACT, None),
        (commit_writes_per_record, CONTRACT, None),
        (commit_release_first, "invariant 1 acknowledged-job-lost", "power-loss"),
        (commit_no_sync, "invariant 1 acknowledged-job-lost", "power-loss"),
        (commit_sync_first, "invariant 1 acknowledged-job-lost", "power-loss"),
        (commit_reversed, LOG_VERIFIES, "power-loss"),
    ],
    "checkpoint": [
        (checkpoint_snapshot_first, "invariant 6 jobs-not-finished", "power-loss"),
        (checkpoint_without_sync, "invariant 6 jobs-not-finished", "power-loss"),
        (checkpoint_delete_first, "invariant 6 jobs-not-finished", "process"),
        (checkpoint_prune_first, "invariant 6 jobs-not-finished", "process"),
        (checkpoint_segments_first, LOG_VERIFIES, "process"),
        (checkpoint_never_prunes, LOG_VERIFIES, "process"),
        (checkpoint_through_newest, CONTRACT, None),
        (checkpoint_never_compacts, CONTRACT, None),
        (checkpoint_no_rotation, CONTRACT, None),
        (checkpoint_one_too_many, CONTRACT, None),
    ],
    "retry": [
        (end_seed, "invariant 4 retry-limit-broken", "process"),
        (end_off_by_one, "invariant 4 retry-limit-broken", "process"),
        (end_crash_never_dead, "invariant 4 retry-limit-broken", "process"),
        (end_dead_at_once, "invariant 4 retry-limit-broken", "process"),
        (end_next_attempt, "invariant 6 jobs-not-finished", "process"),
    ],
}
CASES = [(lab, fn, rule, model) for lab, rows in WRONG.items() for fn, rule, model in rows]


def test_every_lab_has_a_table_of_at_least_four_wrong_answers() -> None:
    assert sorted(WRONG) == sorted(labs.LABS) and all(len(rows) >= 4 for rows in WRONG.values())


@pytest.mark.parametrize(("lab", "fn", "rule", "model"), CASES, ids=[c[1].__name__ for c in CASES])
def test_the_check_fails_the_wrong_answer_naming_the_rule(
    lab: str, fn: Callable[..., Any], rule: str, model: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = labs.check(lab, fn, plot=False)
    out = capsys.readouterr().out
    assert not result.passed and not result.not_implemented and result.first is not None, out
    rule = rule.format(fn.__name__)
    assert result.names.startswith(rule), (result.names, out)
    assert out.startswith(f"FAIL: {fn.__name__} ") and "0 of 0" not in out and rule in out
    first = result.first
    if model is None:  # the function's own contract, checked once every sweep passed
        assert "breaks its contract" in out and first["detail"] in out
        return
    assert first["model"] == model and first["token"] in out and first["crash"] in out
    again = labs.replay(lab, fn, first["token"])  # the token reproduces the failure
    assert any(v.invariant == first["invariant"] for v in again.violations)
    assert f"lab-{lab}" not in mutants.MUTANTS  # registered only while the check ran


CONTRACT_CLAUSES = {  # lab 5: the clause of the contract each answer that survives every crash breaks
    checkpoint_through_newest: "but if snapshot 28 is damaged recovery falls back on replay from seq 1 "
    "(fewer than 2 snapshots), which needs the log from seq 1",
    checkpoint_never_compacts: "the segments through seq 28 are covered by snapshot 28 and never deleted",
    checkpoint_no_rotation: "the WAL segment being written starts at seq 1, not 29",
    checkpoint_one_too_many: "3 snapshots are on disk ([28, 40, 52]), but snapshots_kept is 2",
}


@pytest.mark.parametrize("fn", list(CONTRACT_CLAUSES), ids=[f.__name__ for f in CONTRACT_CLAUSES])
def test_the_checkpoint_contract_names_what_the_checkpoint_left(fn: Callable[..., Any]) -> None:
    why = labs.checkpoint_contract(fn)
    assert why is not None and CONTRACT_CLAUSES[fn] in why, why
    assert labs.checkpoint_contract(reference("lab5-checkpoint")) is None
    assert labs.LABS["checkpoint"].config["snapshots_kept"] == 1  # the sweeps keep one, the contract two


def checkpoint_rotate_first(steps: labs.CheckpointSteps) -> None:
    """The rotation syncs the segment it closes: as good as sync_wal."""
    steps.rotate_wal()
    steps.write_snapshot()
    steps.delete_segments(_prune(steps))


def checkpoint_compact_then_rotate(steps: labs.CheckpointSteps) -> None:
    """`beaver run`'s order: the child compacts, the loop rotates after (docs/architecture.md)."""
    steps.sync_wal()
    steps.write_snapshot()
    steps.delete_segments(_prune(steps))
    steps.rotate_wal()


@pytest.mark.parametrize("fn", [checkpoint_rotate_first, checkpoint_compact_then_rotate])
def test_the_checkpoint_lab_passes_any_safe_order(
    fn: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    result = labs.check("checkpoint", fn, plot=False)
    assert result.passed, capsys.readouterr().out


@pytest.mark.parametrize("keep", [1, 2])
def test_the_reference_checkpoint_leaves_the_bytes_the_real_one_does(keep: int) -> None:
    """The steps are the real Storage's calls: in the real order, the lab's run leaves the same
    files, byte for byte, as the same run with the controller's own checkpoint."""
    sim = labs.LABS["checkpoint"].simulation()
    sim = replace(sim, config=replace(sim.config, snapshots_kept=keep))
    with labs.plugged("checkpoint", reference("lab5-checkpoint")):
        lab = sim.run()
    real = replace(sim, mutant=None).run()
    assert lab.ok and real.ok
    assert lab.summary["files_sha256"] == real.summary["files_sha256"]
    snapshots = [p for p in lab.files if p.startswith("/data/snap/")]
    assert len(snapshots) == keep and "/data/wal/wal-00000000000000000001.log" not in lab.files


def test_an_exhaustive_check_tries_every_subset_of_the_unsynced_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bounded exhaustive search: at every crash point, every subset of the names and blocks not yet
    durable, so every order of the writes since the last sync (lab 1: 4 states a point, lab 2: 32)."""
    for lab, wrong in (("wal", append_sync_first), ("snapshot", snapshot_rename_before_fsync)):
        notebook = next(n for n, name in LAB_OF.items() if name == lab)
        reference = learner_function(NOTEBOOKS / f"{notebook}.ipynb", student=False)
        result = labs.check(lab, reference, plot=False, exhaustive=True)
        out = capsys.readouterr().out
        assert result.passed and f"every subset of {labs.LABS[lab].subsets} unsynced units" in out, out
        # the search finds it too (names come first among the units: 3 hold the failing state)
        assert violations(labs.sweep(lab, wrong, subsets=min(3, labs.LABS[lab].subsets)))


@pytest.mark.parametrize("lab", ["wal", "snapshot"])
def test_the_exhaustive_bound_covers_every_crash_point(lab: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No crash point of the lab leaves more unsynced units than `Lab.subsets`: its search is
    complete, not a sample."""
    counts: list[int] = []
    explore = SimFS._subset

    def spy(fs: SimFS, out: SimFS, mask: int) -> None:
        counts.append(len(fs.unsynced_units()))
        explore(fs, out, mask)

    monkeypatch.setattr(SimFS, "_subset", spy)
    notebook = next(n for n, name in LAB_OF.items() if name == lab)
    labs.sweep(lab, learner_function(NOTEBOOKS / f"{notebook}.ipynb", student=False), subsets=1)
    assert counts and max(counts) == labs.LABS[lab].subsets


def test_a_check_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    labs.check("wal", append_no_sync, plot=False)
    first = capsys.readouterr().out
    labs.check("wal", append_no_sync, plot=False)
    assert capsys.readouterr().out == first
    assert "crash point" in first and "job: task-" in first


def test_a_counterexample_comes_with_a_picture(capsys: pytest.CaptureFixture[str]) -> None:
    plt.close("all")
    labs.check("snapshot", snapshot_seed)
    labs.check("retry", end_seed)  # too many attempts with no crash: the attempts of that run
    labs.check("wal", append_no_checksum)  # broken with no crash: every point fails
    titles = [plt.figure(n).axes[0].get_title() for n in plt.get_fignums()]
    plt.close("all")
    assert titles == [
        "snapshot_seed: outcome of each crash point along the WAL",
        "end_seed: attempts per job in the run without a crash",
        "append_no_checksum: outcome of each crash point along the WAL",
    ]


def test_a_broken_contract_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Mistakes a sweep cannot grade: a value that is not an answer, a snapshot that is not there."""
    cases = [
        (
            "retry",
            lambda job, attempt, max_retry, reason, error: "maybe",
            "next_record returned 'maybe'; it must return a record made by one of R.fail, R.timeout, "
            "R.requeue, R.dead",
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
        (
            "checkpoint",
            lambda steps: steps.sync_wal(),
            "checkpoint returned, but snapshot 28 is not on disk: a checkpoint leaves the snapshot it took",
        ),
        (
            "checkpoint",
            lambda steps: steps.delete_snapshot(steps.seq),
            "delete_snapshot(28): there is no snapshot 28 (on disk: [])",
        ),
        (
            "group-commit",
            lambda f, lines, release: f.write(b"".join(lines)),
            "commit_turn returned without calling release(): no enqueue is ever acknowledged",
        ),
    ]
    for lab, fn, message in cases:
        result = labs.check(lab, fn)
        assert (result.passed, result.error) == (False, message)
        assert capsys.readouterr().out == f"FAIL: {message}\n"
    assert not [name for name in mutants.MUTANTS if name.startswith("lab-")]
    with pytest.raises(
        BeaverError, match="unknown lab 'nope'; known: wal, snapshot, replay, retry, checkpoint, group-commit"
    ):
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

"""Issue 17, the durable half: an accepted job can always run (every record it may have fits the log),
a refused batch writes nothing (not even a new data directory), a handler's error of any size or
kind becomes a FAIL, payloads are stored exactly or refused in one line, and each attempt gets its
own copy of the payload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.cli import main
from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.limits import MAX_DEPTH, PayloadRefused, all_fit, check_job, check_payload, loads_exact
from beaver_sim.core.types import Abandoned, Config, DuplicateJob, JobStatus, OnResult
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import PROCESS, SimFS
from beaver_sim.sim.workers import SimWorkers, misbehaving
from beaver_sim.storage.wal import RecordTooLarge

pytestmark = pytest.mark.usefixtures("clean_env")
CONFIG = Config(data_dir="/data", worker_count=2, task_timeout=1.0, snapshot_interval=0.0, max_retry=3)
LIMIT = CONFIG.max_record_bytes


def nested(depth: int) -> dict[str, Any]:
    """A payload `depth` containers deep, itself included."""
    payload: dict[str, Any] = {}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


class Outcomes:
    """Workers whose every attempt ends at once with `error` (None: success); `mutate` changes the
    payload dict each attempt is given, as a careless handler would."""

    def __init__(self, clock: VirtualClock, error: object = None, mutate: bool = False) -> None:
        self.clock, self.error, self.mutate = clock, error, mutate
        self.seen: list[dict[str, Any]] = []

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        self.seen.append(orjson.loads(orjson.dumps(payload)))
        if self.mutate:
            payload.pop("secret", None)
            payload["seen"] = attempt
        self.clock.call_later(0.1, done, job_id, attempt, self.error is None, self.error)

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        return Abandoned(False)


def controller(fs: SimFS, workers: Any = None, config: Config = CONFIG) -> tuple[Controller, VirtualClock]:
    clock = VirtualClock()
    ctl = Controller(config, clock, Storage.from_config(fs, config), workers or Outcomes(clock))
    if isinstance(ctl.workers, Outcomes):
        ctl.workers.clock = clock
    ctl.start()
    return ctl, clock


def records(fs: SimFS) -> list[bytes]:
    """Every record body in the log, as written."""
    out = []
    for name in sorted(fs.listdir("/data/wal")):
        lines = fs.read_bytes(f"/data/wal/{name}").split(b"\n")[1:-1]
        out += [line.split(b" ", 2)[2] for line in lines]
    return out


# -- 1. accepted means runnable -----------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["x", "é" * 300, "\x01" * 300, "a b\n\"'\\"])
def test_a_job_accepted_at_the_limit_has_every_later_record_within_it(job_id: str) -> None:
    """The largest payload the door lets through: its ENQUEUE, DISPATCH, FAIL and DEAD with the
    longest reasons, at the widest numbers, all fit; one byte more is refused."""
    limit = 8192
    pad = limit
    while True:  # the largest padding accepted
        try:
            check_job(job_id, {"pad": "p" * pad}, limit)
            break
        except RecordTooLarge:
            pad -= 1
    with pytest.raises(RecordTooLarge, match="max_record_bytes = 8192"):
        check_job(job_id, {"pad": "p" * (pad + 1)}, limit)
    n, huge, f = 2**63 - 1, "\x00" * 3_000_000, -2.2250738585072014e-308  # f: the widest float text
    later = [
        R.enqueue(job_id, {"pad": "p" * pad}, f),  # delayed: its not_before counted
        R.dispatch(job_id, n, n, 1.2345678901234567e300),
        R.fail(job_id, n, huge, f),
        R.timeout(job_id, n, f),
        R.dead(job_id, n, "failed: " + R.reason(huge)),
        R.ack(job_id, n),
        R.release(job_id),
        R.revive(job_id),
        R.cancel(job_id),
    ]
    for rec in later:
        rec["seq"] = n
        assert len(orjson.dumps(rec)) <= limit, rec["type"]
    assert len(orjson.dumps(later[0])) > limit - 32  # the bound is tight for the ENQUEUE


def test_the_issues_oversized_id_is_refused_at_the_door_and_the_queue_keeps_running() -> None:
    fs = SimFS()
    ctl, clock = controller(fs)
    with pytest.raises(RecordTooLarge) as refused:
        ctl.enqueue([("ok", {}), ("x" * 1_048_510, {})])
    assert len(str(refused.value)) < 300  # the id is cut in the message: one short line
    assert ctl.state.last_seq == 0 and not ctl.state.jobs
    ctl.enqueue([("ok", {})])
    clock.run()
    assert ctl.state.jobs["ok"].status is JobStatus.COMPLETED


def test_bytes_not_characters_and_a_refused_batch_leaves_no_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's batch: `a`, then an id of 600,000 'é' (1.2 MB in UTF-8, 600,000 characters)."""
    path = tmp_path / "jobs.json"
    path.write_bytes(orjson.dumps([{"id": "a", "payload": {}}, {"id": "é" * 600_000, "payload": {}}]))
    data = tmp_path / "d"
    assert main(["enqueue", "--create", "--file", str(path), "--data-dir", str(data)]) == 2
    assert not data.exists()  # refused before the data directory was made: no LOCK, snap/ or WAL
    assert "max_record_bytes" in capsys.readouterr().err
    fs = SimFS()
    ctl, _ = controller(fs)
    with pytest.raises(RecordTooLarge):
        ctl.enqueue([("a", {}), ("é" * 600_000, {})])
    ctl.stop()
    assert [orjson.loads(r)["type"] for r in records(fs)] == []


def test_a_5mb_payload_at_a_new_data_dir_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps([{"id": "big", "payload": {"blob": "b" * (5 << 20)}}]))
    assert main(["enqueue", "--create", "--file", str(path), "--data-dir", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_record_bytes" in err and "'big'" in err
    assert not (tmp_path / "new").exists()


def test_a_conflict_naming_a_huge_id_is_one_short_line() -> None:
    ctl, _ = controller(SimFS())
    big = "y" * 500_000
    ctl.enqueue([(big, {"n": 1})])
    with pytest.raises(DuplicateJob) as conflict:
        ctl.enqueue([(big, {"n": 2})])
    assert len(str(conflict.value)) < 200 and "500000 characters" in str(conflict.value)


# -- 3. a handler's error of any size or kind is a FAIL ------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        return 503  # type: ignore[return-value]

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@pytest.mark.parametrize(
    "error", ["E" * 2_000_000, ValueError("E" * 2_000_000), "\ud800" * 1000, "\x01" * 5000, Unprintable()]
)
def test_any_error_becomes_a_bounded_fail_and_the_job_ends_dead(error: object) -> None:
    fs = SimFS()
    clock = VirtualClock()
    ctl, clock = controller(fs, Outcomes(clock, error))
    ctl.enqueue([("poison", {}), ("other", {})])
    clock.run()
    assert ctl.state.jobs["poison"].status is JobStatus.DEAD
    ctl.stop()
    bodies = records(fs)
    assert max(map(len, bodies)) < 3000  # every FAIL and DEAD holds a cut reason
    fails = [orjson.loads(b) for b in bodies if b'"fail"' in b and b'"poison"' in b]
    assert len(fails) == 2 and all(len(orjson.dumps(f["error"])) <= R.MAX_REASON_BYTES for f in fails)
    if isinstance(error, str) and len(error) > 1000:
        assert "...[cut: " in fails[0]["error"]
    if isinstance(error, Unprintable):
        assert fails[0]["error"] == "<unprintable Unprintable>"
    again = Storage.from_config(fs.after_crash(PROCESS), CONFIG).state  # and the log replays
    assert again.jobs["poison"].status is JobStatus.DEAD


def test_a_reason_is_cut_with_a_marker_saying_how_long_it_was() -> None:
    cut = R.reason("E" * 2_000_000)
    assert cut.endswith(" ...[cut: 2000000 bytes in all]") and cut.startswith("E" * 1000)
    assert len(orjson.dumps(cut)) == R.MAX_REASON_BYTES
    assert R.reason("short") == "short"


# -- 5. each attempt its own payload -------------------------------------------------------------


def test_a_handler_mutating_its_payload_changes_nothing_stored() -> None:
    fs = SimFS()
    clock = VirtualClock()
    workers = Outcomes(clock, error="fail", mutate=True)
    ctl, clock = controller(fs, workers)
    payload = {"secret": "s3", "nested": {"k": [1, 2]}}
    ctl.enqueue([("m", payload)])
    clock.run()
    assert [s for s in workers.seen] == [payload] * 3  # every retry saw the original
    assert ctl.state.jobs["m"].payload == payload
    assert ctl.enqueue([("m", {"secret": "s3", "nested": {"k": [1, 2]}})]).already_present == 1
    ctl.stop()
    snap = Storage.from_config(fs.after_crash(PROCESS), CONFIG)
    assert snap.report.snapshot_seq and snap.state.jobs["m"].payload == payload


class ReadOnly(Outcomes):
    """Outcomes that declare `payload_read_only`: they keep each payload dict they are handed."""

    payload_read_only = True

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock, error="fail")
        self.handed: list[dict[str, Any]] = []

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        self.handed.append(payload)
        super().submit(job_id, attempt, worker, payload, done)


def test_a_read_only_pool_is_handed_the_stored_payload_itself() -> None:
    clock = VirtualClock()
    workers = ReadOnly(clock)
    ctl, clock = controller(SimFS(), workers)
    ctl.enqueue([("m", {"k": [1]})])
    clock.run()
    stored = ctl.state.jobs["m"].payload
    assert len(workers.handed) == 3 and all(p is stored for p in workers.handed)  # no copy


def test_the_simulated_pool_is_read_only_unless_a_subclass_submits_its_own_way() -> None:
    class Own(SimWorkers):
        def submit(self, *args: Any) -> None:
            super().submit(*args)

    class Declared(Own):
        payload_read_only = True

    assert SimWorkers.payload_read_only and Declared.payload_read_only and not Own.payload_read_only
    assert misbehaving(SimWorkers, ("huge-reason",)).payload_read_only
    assert not misbehaving(SimWorkers, ("mutate-payload",)).payload_read_only


# -- 6, 10. payloads stored exactly or refused in one line ---------------------------------------


def test_all_fit_answers_true_only_for_a_batch_every_job_of_which_passes_check_job() -> None:
    good = [(f"j{i}", {"type": "compute", "value": i, "x": [1.5, "s"]}) for i in range(50)]
    assert all_fit([j for j, _ in good], [p for _, p in good], CONFIG.max_record_bytes)
    bad: list[tuple[Any, Any]] = [
        ("", {}),
        (7, {}),
        ("\ud800", {}),
        ('quote"d', {}),  # escaped in JSON: its size is not its length
        ("é", {}),
        ("j", []),
        ("j", {1: 2}),
        ("j", {"n": None}),
        ("j", {"f": float("nan")}),
        ("j", {"big": 2**70}),
        ("j", nested(MAX_DEPTH + 1)),
        ("j", {"s": "x" * CONFIG.max_record_bytes}),
    ]
    for job in bad:
        ids, payloads = [j for j, _ in good] + [job[0]], [p for _, p in good] + [job[1]]
        assert not all_fit(ids, payloads, CONFIG.max_record_bytes), job
    deep = [("a", nested(MAX_DEPTH)), ("b", nested(2))]  # each within the bound, more in all: doubt
    check_job(*deep[0], CONFIG.max_record_bytes)
    assert not all_fit([j for j, _ in deep], [p for _, p in deep], CONFIG.max_record_bytes)


def test_a_batch_with_two_problems_is_refused_for_the_first_as_job_by_job() -> None:
    ctl, _clock = controller(SimFS())
    ctl.enqueue([("a", {"v": 1})])
    seq = ctl.state.last_seq
    with pytest.raises(DuplicateJob, match="already enqueued"):
        ctl.enqueue([("b", {"v": 2}), ("a", {"v": 3}), ("c", [])])
    with pytest.raises(PayloadRefused, match="job 'c': payload must be an object"):
        ctl.enqueue([("b", {"v": 2}), ("c", []), ("a", {"v": 3})])
    assert ctl.state.last_seq == seq  # all or nothing


def test_nesting_is_bounded_once_for_every_path() -> None:
    check_payload("ok", nested(MAX_DEPTH))
    for depth in (MAX_DEPTH + 1, 300, 1000):
        with pytest.raises(PayloadRefused, match=f"job 'deep': payload.*nested deeper than {MAX_DEPTH}"):
            check_payload("deep", nested(depth))
    ctl, _ = controller(SimFS())
    with pytest.raises(PayloadRefused):  # the controller's door too: a BeaverError, never a TypeError
        ctl.enqueue([("deep", nested(300))])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"n": 123456789012345678901234567890}', "number 123456789012345678901234567890 cannot be stored"),
        (b'{"tiny": 1e-400}', "number 1e-400 cannot be stored exactly"),
        (b'{"x": [1, {"t": -0.0000000000000000000000000000001e-300}]}', "payload['x'][1]['t']: number"),
        (b'{"n": -9223372036854775809}', "cannot be stored exactly"),
    ],
)
def test_numbers_orjson_would_change_are_refused_naming_the_job(text: bytes, problem: str) -> None:
    with pytest.raises(PayloadRefused, match="job 'j': ") as refused:
        check_payload("j", loads_exact(text))
    assert problem in str(refused.value)


def test_numbers_that_round_trip_are_kept_exactly() -> None:
    text = b'{"big": 18446744073709551615, "neg": -9223372036854775808, "sub": 1e-310, "z": 0e-999}'
    payload = loads_exact(text)
    assert check_payload("j", payload) == orjson.dumps(payload)
    assert payload == {"big": 2**64 - 1, "neg": -(2**63), "sub": 1e-310, "z": 0.0}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"n": 2**70}, "beyond 64 bits"),
        ({"f": float("nan")}, "nan is not a JSON number"),
        ({"f": [float("inf")]}, "inf is not a JSON number"),
        ({1: 2}, "key 1 is not a string"),
        ({"s": "\ud800"}, "not valid Unicode"),
        ({"o": object()}, "a object is not JSON"),
    ],
)
def test_python_callers_get_the_same_one_line_refusals(payload: dict[Any, Any], problem: str) -> None:
    with pytest.raises(PayloadRefused, match=problem):
        check_payload("j", payload)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'[{"id": "n", "payload": {"n": 123456789012345678901234567890, "tiny": 1e-400}}]', "number 1234"),
        (b'[{"id": "d", "payload": ' + b'{"a": ' * 300 + b"{}" + b"}" * 301 + b"]", "nested deeper"),
        (b'[{"id": "d", "payload": {"a": ' + b"[" * 1100 + b"]" * 1100 + b"}}]", "depth limit exceeded"),
    ],
)
def test_a_job_file_with_an_inexact_or_deep_payload_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    path = tmp_path / "jobs.json"
    path.write_bytes(content)
    assert main(["enqueue", "--create", "--file", str(path), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and problem in err and str(path) in err, err
    assert not (tmp_path / "d").exists()


def test_a_job_accepted_before_the_limit_was_lowered_still_runs() -> None:
    """max_record_bytes lowered at a restart applies to new jobs; an accepted one (its id near the
    old limit) still gets its DISPATCH, FAIL (with the longest reason) and DEAD records."""
    fs = SimFS()
    wide = replace(CONFIG, max_record_bytes=16384)
    ctl, _ = controller(fs, config=wide)
    long_id = "é" * 6000  # 12 KB of UTF-8: fits 16 KiB, not 4 KiB
    ctl.enqueue([(long_id, {})])
    ctl.stop(snapshot=False)
    crashed = fs.after_crash(PROCESS)
    narrow = replace(CONFIG, max_record_bytes=4096)
    clock = VirtualClock()
    ctl, clock = controller(crashed, Outcomes(clock, "E" * 100_000), narrow)
    with pytest.raises(RecordTooLarge):  # new jobs meet the new limit
        ctl.enqueue([(long_id + "2", {})])
    clock.run()
    assert ctl.state.jobs[long_id].status is JobStatus.DEAD


def test_a_cancelled_long_id_does_not_raise_the_log_limit() -> None:
    """The pending FIFO keeps a cancelled job's place as a tombstone until the head reaches it; a
    restart under a lowered max_record_bytes fits the live jobs only, so a cancelled long id (never
    to be written again) leaves the limit where the config puts it."""
    fs = SimFS()
    ctl, _ = controller(fs, config=replace(CONFIG, max_record_bytes=16384))
    long_id = "é" * 6000
    ctl.enqueue([("a", {}), ("b", {}), ("c", {}), (long_id, {})])  # a, b leased; c heads the FIFO
    assert ctl.cancel([long_id]) == 1
    assert long_id in ctl.state.pending and long_id not in ctl.state.pending_ids()  # a tombstone
    ctl.stop(snapshot=False)
    narrow = replace(CONFIG, max_record_bytes=4096)
    clock = VirtualClock()
    ctl = Controller(narrow, clock, Storage.from_config(fs.after_crash(PROCESS), narrow), Outcomes(clock))
    assert long_id in ctl.state.pending  # replay rebuilt the tombstone
    assert ctl.storage.wal.max_record == narrow.max_record_bytes
    ctl.start()
    clock.run()
    assert {ctl.state.jobs[j].status for j in "abc"} == {JobStatus.COMPLETED}

"""The checker sees each of the invariants break: acknowledged jobs lost or altered, jobs in
two states or unknown, durable completions undone or re-dispatched, too many attempts, seq numbers
reused or a log that does not verify, runs that do not end, runs that differ, and a recovery that
refuses files `wal verify` passes."""

from __future__ import annotations

import orjson
import pytest

from beaver_sim.core import codec
from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.sim import experiment, merge
from beaver_sim.sim.checker import CODES, INVARIANTS, Checker, Violation, same_bytes
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workload import Workload

P = {"type": "compute", "value": 1}


def queue(*recs: R.Record) -> JobQueue:
    q = JobQueue()
    for seq, rec in enumerate(recs, 1):
        R.apply(q, {**rec, "seq": seq})
    return q


def checker(*jobs: str, acked: bool = True) -> Checker:
    c = Checker(max_retry=3, token="TOKEN")
    c.submit((j, dict(P)) for j in jobs)
    if acked:
        c.acknowledge(jobs)
    return c


def found(c: Checker) -> set[tuple[int, str | None]]:
    return {(v.invariant, v.job) for v in c.violations}


def test_a_recovered_state_with_every_acknowledged_job_passes() -> None:
    c = checker("a", "b")
    c.recovered(queue(R.enqueue("a", P), R.enqueue("b", P)), wal_end_lsn=0)
    assert c.ok and not c.lost


def test_an_acknowledged_job_lost_or_altered_breaks_invariant_1() -> None:
    c = checker("a", "b", "c")
    c.crashed("lsn 10", [], durable_lsn=0)
    c.recovered(queue(R.enqueue("a", P), R.enqueue("b", {"type": "compute"})), wal_end_lsn=0)
    assert found(c) == {(1, "c"), (1, "b")} and c.lost == {"c"}
    v = next(v for v in c.violations if v.job == "c")
    assert (v.crash, v.token) == ("lsn 10", "TOKEN")
    assert v.as_dict()["name"] == INVARIANTS[1] and "lsn 10" in str(v) and "job c" in str(v)


def test_recovered_compares_a_snapshot_payload_and_leaves_it_text() -> None:
    """A payload loaded from a snapshot stays its JSON text through the check (the next snapshot
    writes it as it is, not re-encoded); an altered text is still a changed payload."""
    snap = queue(R.enqueue("a", P), R.enqueue("b", P))
    q = codec.from_columns(orjson.loads(codec.state_body(snap)))
    c = checker("a", "b")
    c.recovered(q, wal_end_lsn=0)
    assert c.ok and all(type(j.raw) is str for j in q.jobs.values())
    assert codec.state_body(q) == codec.state_body(snap)
    snap.jobs["b"].raw = snap.jobs["b"].text = orjson.dumps({"type": "compute", "value": 2}).decode()
    c = checker("a", "b")
    c.recovered(codec.from_columns(orjson.loads(codec.state_body(snap))), wal_end_lsn=0)
    assert found(c) == {(1, "b")}


def test_a_payload_text_is_compared_as_its_payload_whatever_its_key_order() -> None:
    """The sent payload's own text is a shortcut, not the test: another text of the same payload
    (keys in another order) is the same payload, at recovery and at the end."""
    snap = queue(R.enqueue("a", P), R.enqueue("b", P))
    snap.jobs["b"].raw = '{"value":1,"type":"compute"}'
    c = checker("a", "b")
    restored = Checker(max_retry=3, token="TOKEN")
    restored.restore(c.capture())
    assert restored.texts is c.texts  # continuations of one capture share the texts
    for ck in (c, restored):
        q = codec.from_columns(orjson.loads(codec.state_body(snap)))
        ck.recovered(q, wal_end_lsn=0)
        assert ck.ok
    c.texts["a"] = (c.submitted["a"], '{"type":"compute","value":9}')  # a text not its payload's
    q = codec.from_columns(orjson.loads(codec.state_body(snap)))
    c.recovered(q, wal_end_lsn=0)
    assert c.ok  # decoded and compared: the same payload


def test_the_texts_cache_is_no_part_of_a_merge_key() -> None:
    """Continuations share `texts` and fill it as they go: two in the same state must still merge."""
    c = checker("a", "b")
    keyed = orjson.dumps(merge._checker(merge._Canon({}), c))
    assert c._same("b", orjson.dumps(P).decode(), c.submitted["b"]) and c.texts
    assert orjson.dumps(merge._checker(merge._Canon({}), c)) == keyed


def test_lost_and_altered_jobs_are_named_in_acknowledgement_order_whatever_the_state_order() -> None:
    c = checker("a", "b", "c", "d", "e")  # the checks walk the state; the report keeps the clients' order
    changed = {"type": "compute", "value": 2}
    c.recovered(queue(R.enqueue("e", changed), R.enqueue("c", P), R.enqueue("b", changed)), wal_end_lsn=0)
    assert [(v.invariant, v.job) for v in c.violations] == [(1, "a"), (1, "d"), (1, "b"), (1, "e")]
    assert c.lost == {"a", "d"}


def test_unacknowledged_jobs_may_be_lost() -> None:
    c = checker("a", acked=False)
    c.recovered(JobQueue(), wal_end_lsn=0)
    assert c.ok


def test_a_job_no_client_sent_or_a_broken_structure_breaks_invariant_2() -> None:
    c = checker("a")
    q = queue(R.enqueue("a", P), R.enqueue("ghost", P))
    c.recovered(q, wal_end_lsn=0)
    assert found(c) == {(2, "ghost")}
    q.counts[JobStatus.PENDING] += 1  # counts no longer add up to the jobs
    c.recovered(q, wal_end_lsn=0)
    assert (2, None) in found(c)


def test_a_durable_completion_undone_or_redispatched_breaks_invariant_3() -> None:
    c = checker("a", "b")
    trace = [
        ({"seq": 5, "type": R.ACK, "job": "a", "attempt": 1}, 400, 450),
        ({"seq": 6, "type": R.ACK, "job": "b", "attempt": 1}, 450, 500),  # written, never synced
    ]
    c.crashed("record 6", trace, durable_lsn=450)
    assert c.completed == {"a"} and c.durable_seq == 5
    pending = queue(
        R.enqueue("a", P), R.enqueue("b", P), R.enqueue("x", P), R.enqueue("y", P), R.enqueue("z", P)
    )
    c.submit([("x", P), ("y", P), ("z", P)])
    c.recovered(pending, wal_end_lsn=450)
    assert found(c) == {(3, "a")}
    c.life([("b", 1), ("a", 2)], completed_at_start={"a"})
    assert next(v.detail for v in c.violations if v.job == "a").startswith("its ACK was durable")
    c2 = checker("a")
    c2.life([("a", 2)], completed_at_start={"a"})
    assert found(c2) == {(3, "a")}


def test_too_many_attempts_break_invariant_4() -> None:
    c = checker("a", "b")
    c.life([("a", 4)], completed_at_start=set())
    assert found(c) == {(4, "a")}
    q = queue(
        R.enqueue("a", P),
        R.enqueue("b", P),
        R.dispatch("a", 1, 0, 3.0),
        R.dead("a", 1, "failed"),  # dead after 1 of 3 attempts
        R.dispatch("b", 1, 0, 3.0),
        R.ack("b", 1),
    )
    c2 = checker("a", "b")
    fs = SimFS()
    fs.makedirs("/wal")
    c2.finished(q, fs, "/wal")
    assert (4, "a") in found(c2)


def test_durable_records_lost_break_invariant_5() -> None:
    c = checker()
    c.crashed(
        "lsn 900",
        [({"seq": s, "type": R.ACK, "job": "a", "attempt": 1}, s * 10, s * 10 + 10) for s in (1, 2, 3)],
        40,
    )
    c.completed.clear()
    q = queue()  # recovery came back empty: seq 1..3 will be reused
    c.recovered(q, wal_end_lsn=0)
    assert (5, None) in found(c) and "used again" in c.violations[0].detail


def test_a_refused_recovery_or_a_failed_controller_breaks_invariant_6() -> None:
    c = checker()
    c.refused(ValueError("wal-001.log: bad header\n(line two)"))
    assert [v.invariant for v in c.violations] == [6]
    assert c.violations[0].detail == "recovery refused to start: wal-001.log: bad header (line two)"
    c2 = checker()
    c2.failed(ValueError("cannot apply"))
    assert c2.violations[0].detail == "the controller failed: cannot apply"


def test_the_end_state_and_the_log_on_disk() -> None:
    fs = SimFS()
    s = Storage.open(fs, "/d")
    for rec in (R.enqueue("a", P), R.enqueue("b", P), R.dispatch("a", 1, 0, 3.0), R.ack("a", 1)):
        s.append(rec)
    s.wal.flush()
    c = checker("a", "b")
    c.finished(s.state, fs, "/d/wal")
    assert found(c) == {(6, "b"), (6, None)}  # b never ended; completed + dead != acknowledged
    c2 = checker("a", "b")
    c2.finished(s.state, fs, "/d/wal", since=0)
    path = "/d/wal/" + fs.listdir("/d/wal")[0]
    fs.files[path].data[-3:-2] = b"X"  # a flipped byte in the last record
    c3 = checker("a", "b")
    c3.finished(s.state, fs, "/d/wal")
    assert (5, None) in found(c3)


def test_each_violation_is_reported_once_per_job() -> None:
    c = checker("a")
    for _ in range(3):
        c.recovered(JobQueue(), wal_end_lsn=0)
    assert len(c.violations) == 1 and isinstance(c.violations[0], Violation)


def test_same_bytes_names_the_files_that_differ() -> None:
    assert same_bytes({"/a": b"1", "/b": b"2"}, {"/a": b"1", "/b": b"3", "/c": b""}) == ["/b", "/c"]
    assert set(INVARIANTS) == set(CODES) == set(range(1, 12))


def test_an_unacknowledged_batch_may_leave_only_a_prefix_with_exact_payloads() -> None:
    c = checker("a", "b", "c", acked=False)
    c.recovered(queue(R.enqueue("a", P), R.enqueue("b", P)), wal_end_lsn=0)  # a prefix: fine
    assert c.ok
    c.recovered(queue(R.enqueue("a", P), R.enqueue("c", P)), wal_end_lsn=0)  # b is missing before c
    c.recovered(queue(R.enqueue("a", {"other": 1})), wal_end_lsn=0)
    assert found(c) == {(8, "c"), (8, "a")}
    fs = SimFS()
    Storage.open(fs, "/d").close()
    c2 = checker("x", acked=False)
    c2.finished(JobQueue(), fs, "/d/wal")
    assert (8, "x") in found(c2)  # never acknowledged, retries or not


def test_an_interval_loss_inside_the_window_is_allowed_and_one_outside_it_is_not() -> None:
    """`fsync: interval` may lose, on a power loss, the jobs acknowledged at most `window` seconds
    before it; losing one acknowledged earlier breaks invariant 1."""
    c = Checker(max_retry=3, token="TOKEN", window=0.05)
    c.submit([("early", dict(P)), ("late", dict(P))])
    c.acknowledge(["early"], at=0.2)
    c.acknowledge(["late"], at=0.96)
    c.power_loss(1.0)
    c.recovered(queue(R.enqueue("early", P)), wal_end_lsn=0)
    assert c.ok and c.lost_in_window == {"late"} and list(c.acked) == ["early"]
    c.power_loss(1.0)
    c.recovered(queue(), wal_end_lsn=0)  # `early` was acknowledged 0.8 s before the power loss
    assert found(c) == {(1, "early")} and c.lost == {"early"}
    process = Checker(max_retry=3, token="TOKEN", window=0.05)  # no power loss: no window
    process.submit([("late", dict(P))])
    process.acknowledge(["late"], at=0.96)
    process.recovered(queue(), wal_end_lsn=0)
    assert found(process) == {(1, "late")}


def test_a_recovery_refusing_what_verify_passes_is_invariant_9(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator asks `wal verify`'s read of the files whenever recovery refuses them: a
    recovery that refuses a log verify passes (here: one told to refuse every restart) is caught."""
    c = checker("a")
    c.refused(BeaverError("no"), verify_ok=False)
    assert [v.invariant for v in c.violations] == [6]
    c.refused(BeaverError("no"), verify_ok=True)
    assert [v.invariant for v in c.violations] == [6, 9] and CODES[9] == "verify-ok-recovery-refused"

    class Refusing(Storage):
        @classmethod
        def open(cls, fs: SimFS, data_dir: str, **options: object) -> Storage:  # type: ignore[override]
            if fs.exists(data_dir):
                raise BeaverError("refused on purpose")
            return Storage.open(fs, data_dir, **options)  # type: ignore[arg-type]

    sim = Simulation(Config(data_dir="/sim"), Workload(20), 3, crash=CrashPlan("record", 30))
    assert sim.run().ok
    monkeypatch.setattr(experiment, "Storage", Refusing)
    codes = {CODES[v.invariant] for v in sim.run().violations}
    assert codes == {"jobs-not-finished", "verify-ok-recovery-refused"}


def test_a_token_given_as_a_function_is_made_once_and_only_when_asked() -> None:
    """A sweep's continuation hands its checker `Simulation.token` (a zlib pass) uncalled: a run
    without a violation never packs it; a violation carries the same token as a string would."""
    made: list[int] = []

    def token() -> str:
        made.append(1)
        return "TOKEN"

    c = Checker(max_retry=3, token=token)
    c.submit([("a", dict(P))])
    c.acknowledge(["a"])
    c.recovered(queue(R.enqueue("a", dict(P))), 0)
    assert made == [] and c.ok
    c.recovered(queue(), 0)  # "a" lost: invariant 1, which names the token
    c.violation(6, None, "an ending")
    assert c.token == "TOKEN" and made == [1]
    assert [(v.invariant, v.token) for v in c.violations] == [(1, "TOKEN"), (6, "TOKEN")]

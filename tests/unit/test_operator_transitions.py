"""The operator's transitions on the real Controller over SimFS and the VirtualClock: results and
reasons kept in the state and its snapshots, requeue of dead jobs with a fresh budget, cancel,
delayed jobs and retry backoff, each surviving a restart (snapshot + replay) unchanged."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from beaver_sim.core import codec
from beaver_sim.core import records as R
from beaver_sim.core.codec import decode_snapshot
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Abandoned, Backoff, BeaverError, Config, JobStatus, OnResult
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS

CONFIG = Config(data_dir="/d", worker_count=2, task_timeout=5.0, snapshot_interval=0, max_retry=2)


class Scripted:
    """Workers whose attempts end only when the test ends them, with the result or error it gives."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[int, OnResult]] = {}
        self.started: list[tuple[float, str, int]] = []
        self.clock: VirtualClock | None = None

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        self.running[job_id] = (attempt, done)
        self.started.append((self.clock.now() if self.clock else 0.0, job_id, attempt))

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        self.running.pop(job_id, None)
        return Abandoned(False)

    def end(self, job_id: str, ok: bool, detail: object = None) -> None:
        attempt, done = self.running.pop(job_id)
        done(job_id, attempt, ok, detail)


class World:
    """One data directory on SimFS, with a controller that can be stopped and started again."""

    def __init__(self, config: Config = CONFIG) -> None:
        self.config, self.fs, self.clock = config, SimFS(), VirtualClock()
        self.workers = Scripted()
        self.workers.clock = self.clock
        self.ctl = self._start()

    def _start(self) -> Controller:
        storage = Storage.from_config(self.fs, self.config)
        ctl = Controller(self.config, self.clock, storage, self.workers)
        ctl.start()
        self.clock.run(self.clock.now())
        return ctl

    def restart(self, snapshot: bool = True) -> Controller:
        """Stop (with a snapshot, or none: all replayed), recover from the files, start again."""
        self.ctl.stop(snapshot=snapshot)
        self.workers.running.clear()
        self.ctl = self._start()
        return self.ctl

    def run(self, until: float | None = None) -> None:
        self.clock.run(self.clock.now() if until is None else until)

    def enqueue(self, *jobs: tuple[Any, ...]) -> None:
        self.ctl.enqueue(jobs)
        self.run()

    @property
    def state(self) -> JobQueue:
        return self.ctl.state


def _same_after_restarts(w: World) -> None:
    """The state replayed from the log alone, and loaded from a snapshot, is the live state."""
    live = codec.to_columns(w.state)
    assert codec.to_columns(w.restart(snapshot=False).state) | {"last_seq": 0} == live | {"last_seq": 0}
    assert codec.to_columns(w.restart(snapshot=True).state) | {"last_seq": 0} == live | {"last_seq": 0}


# -- results and reasons ---------------------------------------------------------------------------


def test_results_and_reasons_are_kept_in_the_state_and_survive_checkpoints() -> None:
    w = World()
    w.enqueue(("a", {}), ("b", {}))
    w.workers.end("a", True, {"rows": [1, 2], "total": 3.5})
    w.workers.end("b", False, "ValueError: no")
    w.run()
    w.workers.end("b", False, "ValueError: still no")
    w.run()
    assert w.state.results == {"a": {"rows": [1, 2], "total": 3.5}}
    assert w.state.reasons == {"b": "failed: ValueError: still no"}
    w.ctl.stop()
    snap = w.ctl.storage.snapshots
    newest = snap.seqs()[-1]
    path = f"/d/snap/snap-{newest:020d}.json"
    loaded = decode_snapshot(w.fs.read_bytes(path), path)
    assert loaded.results == {"a": {"rows": [1, 2], "total": 3.5}}
    assert loaded.reasons == {"b": "failed: ValueError: still no"}
    w.ctl = w._start()
    _same_after_restarts(w)


def test_a_none_result_writes_the_ack_as_before() -> None:
    """Default outputs stay byte-identical: a handler returning None writes no `result` key."""
    assert R.ack("a", 1) == {"seq": 0, "type": "ack", "job": "a", "attempt": 1}
    assert R.ack("a", 1, 0) == {"seq": 0, "type": "ack", "job": "a", "attempt": 1, "result": 0}


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ("x" * 70_000, "over max_result_bytes = 65536"),
        (float("nan"), "nan is not a JSON number"),
        ({"when": object()}, "a object is not JSON"),
        ({1: "a"}, "key 1 is not a string"),
        (2**70, "beyond 64 bits"),
    ],
    ids=["too-large", "nan", "object", "int-key", "huge-int"],
)
def test_a_result_that_cannot_be_kept_fails_the_attempt_saying_why(result: object, why: str) -> None:
    w = World(replace(CONFIG, max_retry=1))
    w.enqueue(("a", {}))
    w.workers.end("a", True, result)
    w.run()
    assert w.state.get("a").status is JobStatus.DEAD  # type: ignore[union-attr]
    reason = w.state.reasons["a"]
    assert reason.startswith("failed: result refused: ") and why in reason and "\n" not in reason
    assert w.state.results == {}


def test_the_result_bound_keeps_the_ack_within_max_record_bytes() -> None:
    config = replace(CONFIG, max_record_bytes=4096, max_result_bytes=1 << 20, max_retry=1)
    w = World(config)
    w.enqueue(("a", {}), ("b", {}))
    room = R.result_room(len(b'"a"'), 4096)
    w.workers.end("a", True, "y" * (room - 2))  # its JSON: exactly the room
    w.workers.end("b", True, "y" * (room - 1))
    w.run()
    assert w.state.results == {"a": "y" * (room - 2)}
    assert f"the {room} bytes the ACK can hold" in w.state.reasons["b"]
    ack = R.ack("a", -(2**63), "y" * (room - 2)) | {"seq": -(2**63)}  # the widest numbers
    assert len(orjson.dumps(ack)) == 4096


def test_retention_bounds_results_and_reasons_with_their_jobs() -> None:
    w = World(replace(CONFIG, completed_retention=2, max_retry=1))
    for i in range(5):
        w.enqueue((f"j{i}", {}))
        w.workers.end(f"j{i}", i % 2 == 0, {"i": i} if i % 2 == 0 else f"E{i}")
        w.run()
    assert list(w.state.jobs) == ["j3", "j4"]
    assert w.state.results == {"j4": {"i": 4}} and w.state.reasons == {"j3": "failed: E3"}
    _same_after_restarts(w)


# -- requeue and cancel --------------------------------------------------------------------------


def test_a_requeued_dead_job_runs_again_with_a_fresh_budget() -> None:
    w = World()  # max_retry 2
    w.enqueue(("a", {}))
    for _ in range(2):
        w.workers.end("a", False, "boom")
        w.run()
    assert w.state.get("a").status is JobStatus.DEAD  # type: ignore[union-attr]
    assert w.ctl.requeue(["a"]) == 1
    w.run()
    assert w.state.get("a").status is JobStatus.IN_FLIGHT and "a" not in w.state.reasons  # type: ignore[union-attr]
    assert w.state.base == {"a": 2} and w.workers.running["a"][0] == 3  # attempt numbers go on
    w.workers.end("a", False, "again")
    w.run()
    assert w.state.get("a").status is JobStatus.IN_FLIGHT  # type: ignore[union-attr]
    w.workers.end("a", True, "fixed")
    w.run()
    assert w.state.get("a").status is JobStatus.COMPLETED and w.state.results == {"a": "fixed"}  # type: ignore[union-attr]
    assert [(j, a) for _, j, a in w.workers.started] == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
    _same_after_restarts(w)  # the budget base survives a snapshot and a replay


def test_requeue_and_cancel_refuse_in_one_line_and_write_nothing() -> None:
    w = World()
    w.enqueue(("run", {}), ("wait", {}), ("wait2", {}), ("p", {}))
    w.workers.end("run", True)
    w.run()
    seq = w.state.last_seq
    with pytest.raises(BeaverError, match=r"cannot requeue job 'p': it is pending \(only a dead job"):
        w.ctl.requeue(["p"])
    with pytest.raises(BeaverError, match="cannot cancel job 'nope': no such job"):
        w.ctl.cancel(["p", "nope"])  # all or nothing: p is not cancelled either
    with pytest.raises(BeaverError, match=r"it is in_flight .*may already have had effects"):
        w.ctl.cancel(["wait"])
    with pytest.raises(BeaverError, match="it is completed"):
        w.ctl.cancel(["run"])
    assert w.state.last_seq == seq and w.state.get("p").status is JobStatus.PENDING  # type: ignore[union-attr]


def test_a_cancelled_job_never_runs_and_stays_cancelled() -> None:
    w = World(replace(CONFIG, worker_count=1))
    w.enqueue(("a", {}), ("b", {}), ("c", {}))
    assert w.ctl.cancel(["b", "b"]) == 1  # an id named twice counts once
    w.run()
    assert list(w.state.pending) == ["c"] and w.state.stats()["cancelled"] == 1
    w.workers.end("a", True)
    w.run()
    w.workers.end("c", True)
    w.run()
    assert [j for _, j, _ in w.workers.started] == ["a", "c"]
    assert w.state.get("b").status is JobStatus.CANCELLED  # type: ignore[union-attr]
    _same_after_restarts(w)


# -- delayed jobs and backoff ------------------------------------------------------------------------


def test_a_delayed_job_is_dispatched_no_earlier_across_restarts() -> None:
    w = World(replace(CONFIG, worker_count=8))
    w.enqueue(("now", {}), ("later", {}, {"delay": 30.0}), ("at", {}, {"not_before": 12.5}))
    w.enqueue(("past", {}, {"not_before": 0.0}))  # already due: no delay
    assert w.state.not_before == {"later": 30.0, "at": 12.5} and w.state.stats()["delayed"] == 2
    w.run(10.0)
    w.restart(snapshot=True)  # recovered from the snapshot
    w.run(20.0)
    w.restart(snapshot=False)  # and from the log
    w.run(40.0)
    starts: dict[str, float] = {}
    for t, j, _ in w.workers.started:
        starts.setdefault(j, t)  # its first start (an attempt in flight at a restart runs again)
    assert starts["now"] == 0.0 and starts["past"] == 0.0
    assert starts["at"] == 12.5 and starts["later"] == 30.0  # at their not_before, not after a restart
    assert w.state.not_before == {}


def test_a_cancelled_delayed_job_never_runs() -> None:
    w = World()
    w.enqueue(("d", {}, {"delay": 5.0}))
    w.ctl.cancel(["d"])
    w.run(60.0)
    assert w.workers.started == [] and w.state.get("d").status is JobStatus.CANCELLED  # type: ignore[union-attr]
    _same_after_restarts(w)


@pytest.mark.parametrize(
    ("when", "why"),
    [
        ({"delay": -1}, "delay -1 must be in"),
        ({"delay": float("inf")}, "is not a finite number"),
        ({"delay": True}, "is not a finite number"),
        ({"not_before": "soon"}, "is not a finite number"),
        ({"delay": 1, "not_before": 2}, "when must be"),
        ([1], "when must be"),
    ],
)
def test_a_bad_delay_refuses_the_batch_naming_the_job(when: object, why: str) -> None:
    w = World()
    with pytest.raises(BeaverError, match=f"job 'x': .*{why}"):
        w.ctl.enqueue([("ok", {}), ("x", {}, when)])
    assert len(w.state) == 0


def test_retry_backoff_delays_each_retry_exponentially_with_jitter_and_none_is_as_before() -> None:
    backoff = Backoff(base=1.0, max=3.0, jitter=0.5)
    w = World(replace(CONFIG, max_retry=4, retry_backoff=backoff))
    w.enqueue(("a", {}))
    failed_at = []
    for _ in range(3):
        failed_at.append(w.clock.now())
        w.workers.end("a", False, "boom")
        w.run(w.clock.now() + 4)  # past the longest wait (3 s), before the timeout (5 s)
    waits = [t - f for (t, _, _), f in zip(w.workers.started[1:], failed_at)]
    draws = w.ctl.draws
    expected = [min(3.0, 2.0 ** (n - 1)) * (1 - 0.5 * draws.jitter("a", n)) for n in (1, 2, 3)]
    assert waits == pytest.approx(expected, abs=1e-9)  # times are sums of floats
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 1.5 <= waits[2] <= 3.0
    plain = World(replace(CONFIG, max_retry=4))
    plain.enqueue(("a", {}))
    plain.workers.end("a", False, "boom")
    plain.run()
    assert [t for t, _, _ in plain.workers.started] == [0.0, 0.0]  # no backoff: at once, as before
    fails = [r for r in _records(plain) if r["type"] == R.FAIL]
    assert "not_before" not in fails[0]


def _records(w: World) -> list[dict[str, Any]]:
    from beaver_sim.storage.wal import scan

    got: list[dict[str, Any]] = []
    w.ctl.storage.wal.flush()
    scan(w.fs, "/d/wal", 0, lambda rec, _lsn: got.append(rec))
    return got

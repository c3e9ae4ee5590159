"""The operator's commands at scale: `cancel` of a pending job leaves a tombstone in the FIFO (never
a search of it), `revive` under retention leaves a stale place in the window, `requeue --dead` reads
the dead index; each without touching the other jobs, with the FIFO, the window, the snapshot bytes
and validate() as they were."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from beaver_sim.cli import main
from beaver_sim.core import codec
from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Config, JobStatus, Lease
from beaver_sim.runtime.service import _NeverStarted, operate
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.fs import RealFS


def _refuse(*_: Any) -> NoReturn:
    raise AssertionError("walked every element: an O(n) step in an O(1) command")


class Unsearchable(deque[str]):
    """A deque that may be appended to and popped at either end, never searched or walked."""

    remove = __iter__ = __contains__ = index = count = _refuse


class Unwalkable(dict[str, Any]):
    """The jobs by id, read one at a time only."""

    __iter__ = items = values = keys = _refuse


def queue(n: int) -> JobQueue:
    q = JobQueue()
    for i in range(n):
        q.enqueue(f"j{i}", {"i": i})
    return q


def run(q: JobQueue, job_id: str, end: str = "complete") -> None:
    """Dispatch `job_id` (the head) and end its attempt with `end` (complete, kill, requeue)."""
    attempt = q.jobs[job_id].attempt + 1
    q.dispatch(job_id, Lease(attempt, 0, 9.0))
    getattr(q, end)(job_id, attempt)


def test_cancel_of_a_pending_job_never_searches_the_fifo() -> None:
    q = queue(6)
    q.pending = Unsearchable(q.pending)
    q.cancel("j3")
    q.cancel("j1")
    q.cancel("j0")  # the head: gone at once, and the tombstone of j1 behind it
    assert q.counts[JobStatus.PENDING] == 3 and q.gone == {"j3": 1}
    assert list(deque.__iter__(q.pending)) == ["j2", "j3", "j4", "j5"]  # the head is pending
    q.pending = deque(deque.__iter__(q.pending))  # checked below with the plain deque
    assert q.peek() == "j2" and q.pending_ids() == ["j2", "j4", "j5"]
    q.validate()


def test_the_head_skips_tombstones_so_a_cancelled_job_is_never_dispatched() -> None:
    q = queue(5)
    for job_id in ("j1", "j2", "j4"):
        q.cancel(job_id)
    run(q, "j0")  # the tombstones j1, j2 at the new head go with it
    assert list(q.pending) == ["j3", "j4"] and q.peek() == "j3" and q.gone == {"j4": 1}
    run(q, "j3")
    assert not q.pending and q.peek() is None and not q.gone  # nothing left: the loop sees no work
    done, cancelled = JobStatus.COMPLETED, JobStatus.CANCELLED
    assert [q.jobs[f"j{i}"].status for i in range(5)] == [done, cancelled, cancelled, done, cancelled]
    q.validate()


def test_tombstones_are_compacted_once_they_outnumber_the_pending_jobs() -> None:
    q = queue(400)
    cancelled = [f"j{i}" for i in range(1, 400) if i % 5]  # 319 of them, never the head
    for n, job_id in enumerate(cancelled, 1):
        q.cancel(job_id)
        assert len(q.pending) - q.counts[JobStatus.PENDING] == len(q.gone)  # one tombstone each
        assert len(q.pending) <= 2 * q.counts[JobStatus.PENDING] + 64, n
    assert len(q.pending) < 400 - 64  # rebuilt at least once, in place
    assert q.pending_ids() == [f"j{i}" for i in range(400) if i % 5 == 0]
    q.validate()


def test_a_dropped_cancelled_id_enqueued_again_waits_behind_its_tombstone() -> None:
    q = queue(3)
    q.set_retention(1)
    q.cancel("j1")  # a tombstone between j0 and j2
    q.cancel("j2")  # the window holds one: j1 is dropped, its tombstone stays
    assert "j1" not in q and q.gone == {"j1": 1, "j2": 1}
    q.enqueue("j1", {"again": True})
    assert q.pending_ids() == ["j0", "j1"] and list(q.pending) == ["j0", "j1", "j2", "j1"]
    run(q, "j0")
    assert q.peek() == "j1" and list(q.pending) == ["j1"]  # the new j1, at its own place
    run(q, "j1")
    assert q.jobs["j1"].payload == {"again": True} and not q.pending
    q.validate()


def test_revive_under_retention_never_searches_the_window_and_its_old_place_is_skipped() -> None:
    q = queue(5)
    q.set_retention(3)
    run(q, "j0", "kill")
    run(q, "j1")
    q.ended = Unsearchable(q.ended)
    q.revive("j0")  # its place, at the front of the window, goes stale
    q.ended = deque(deque.__iter__(q.ended))
    assert q.stale == {"j0": 1} and q.ended_ids() == ["j1"]
    run(q, "j2")
    run(q, "j3")
    run(q, "j4")  # four ended, three kept: the stale place of j0 is passed over, j1 is dropped
    assert "j1" not in q and q.jobs["j0"].status is JobStatus.PENDING and q.dropped == 1
    assert q.ended_ids() == ["j2", "j3", "j4"] and not q.stale and q.stale_n == 0
    run(q, "j0", "kill")  # dead again: a place of its own at the back
    assert q.ended_ids() == ["j3", "j4", "j0"]
    q.validate()


def test_stale_places_are_compacted_once_they_outnumber_the_window() -> None:
    q = queue(300)
    q.set_retention(1000)
    for i in range(300):
        run(q, f"j{i}", "kill")
    for i in range(300):
        q.revive(f"j{i}")
        assert q.stale_n <= (len(q.ended) + 64) // 2 + 1
    assert len(q.ended) < 300 and q.ended_ids() == [] and list(q.dead) == []
    q.validate()


def test_the_dead_index_holds_the_dead_oldest_death_first() -> None:
    q = queue(3)
    run(q, "j0", "requeue")
    run(q, "j1", "kill")
    run(q, "j2", "kill")
    run(q, "j0", "kill")
    assert list(q.dead) == ["j1", "j2", "j0"]
    q.revive("j2")
    assert list(q.dead) == ["j1", "j0"]
    back = codec.from_columns(orjson.loads(orjson.dumps(codec.to_columns(q))))
    assert list(back.dead) == ["j0", "j1"]  # a snapshot keeps no death order: id-insertion order
    assert list(codec.from_state(q.to_state()).dead) == ["j0", "j1"]
    q.set_retention(1)  # no end order kept: id-insertion order, and the window drops j0 from the index
    assert list(q.dead) == ["j1"] and "j0" not in q
    q.validate()


def test_the_snapshot_holds_neither_tombstones_nor_stale_places() -> None:
    """The same bytes as a queue that never had them: what was cancelled or revived is as before."""
    lazy, plain = queue(6), queue(6)
    for q in (lazy, plain):
        q.set_retention(4)
        run(q, "j0", "kill")
        q.cancel("j2")
        q.cancel("j4")
        q.revive("j0")
        q.last_seq = 9
    plain.pending = deque(plain.pending_ids())
    plain.ended = deque(plain.ended_ids())
    plain.gone, plain.stale, plain.stale_n = {}, {}, 0
    assert list(lazy.pending) != list(plain.pending) and list(lazy.ended) != list(plain.ended)
    assert codec.encode_snapshot(lazy) == codec.encode_snapshot(plain)
    assert lazy.to_state() == plain.to_state()
    assert codec.to_columns(lazy)["pending"] == ["j1", "j3", "j5", "j0"]
    assert codec.to_columns(lazy)["ended"] == ["j2", "j4"]


def _busy() -> JobQueue:
    q = queue(6)
    q.set_retention(5)
    run(q, "j0", "kill")
    run(q, "j1", "kill")
    q.revive("j0")
    q.cancel("j3")
    q.validate()
    return q


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda q: q.pending.appendleft("j3"), "tombstone .* at the head"),
        (lambda q: q.gone.__setitem__("j3", 2), "fewer skipped places than counted"),
        (lambda q: q.gone.__setitem__("j5", 0), "places skipped in the pending FIFO"),
        (lambda q: q.gone.clear(), "in the pending FIFO but not pending"),
        (lambda q: q.gone.__setitem__("j5", 1), "missing from the pending FIFO"),
        (lambda q: q.dead.__setitem__("j2", None), "in the dead index but not dead"),
        (lambda q: q.dead.clear(), "missing from the dead index"),
        (lambda q: setattr(q, "stale_n", 2), "2 stale places in the retention window, 1 by id"),
        (lambda q: (q.stale.clear(), setattr(q, "stale_n", 0)), "j0' is in the retention window but has not"),
        (lambda q: (q.stale.__setitem__("j1", 1), setattr(q, "stale_n", 2)), "missing from the retention"),
    ],
)
def test_validate_checks_tombstones_stale_places_and_the_dead_index(damage, match: str) -> None:
    q = _busy()
    damage(q)
    with pytest.raises(AssertionError, match=match):
        q.validate()


# -- through the controller: `beaver requeue --dead` ---------------------------------------------

CONFIG = Config(data_dir="/d", worker_count=2, task_timeout=5.0, snapshot_interval=0, max_retry=1)
DEATHS = ["c", "a", "d"]  # the order the jobs died in; enqueued a, b, c, d, e


def _deaths() -> list[R.Record]:
    recs = [R.enqueue(job_id, {}) for job_id in "abcde"]
    for worker, job_id in enumerate(["a", "b", "c"]):
        recs.append(R.dispatch(job_id, 1, worker, 9.0))
    recs += [R.dead("c", 1, "x"), R.dead("a", 1, "y"), R.dispatch("d", 1, 0, 9.0), R.dead("d", 1, "z")]
    return recs


def test_requeue_dead_reads_the_dead_index_never_every_job() -> None:
    storage = Storage.from_config(SimFS(), CONFIG)
    for rec in _deaths():
        storage.append(rec)
    ctl = Controller(CONFIG, VirtualClock(), storage, _NeverStarted())
    ctl.state.jobs = Unwalkable(ctl.state.jobs)
    assert operate(ctl, "requeue", [], True) == 3
    ctl.state.jobs = dict(dict.items(ctl.state.jobs))
    assert ctl.state.pending_ids() == ["e", *DEATHS] and not ctl.state.dead
    ctl.state.validate()


def test_beaver_requeue_dead_requeues_oldest_death_first(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    storage = Storage.open(RealFS(), d)
    for rec in _deaths():
        storage.append(rec)
    storage.close()
    assert main(["requeue", "--dead", "--data-dir", d]) == 0
    again = Storage.open(RealFS(), d)
    assert again.state.pending_ids() == ["e", *DEATHS] and not again.state.dead
    again.close()

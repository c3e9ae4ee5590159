"""Merging a sweep's continuations whose logical state converges (`crash_sweep(merge=True)`).

Two continuations of one sweep that, between two events of their second life, hold equal logical
state run the same future: what happens next is a function of that state alone. `state_key` is
that state, as bytes: the clock's live events in order (when, callback, arguments), the queue, the
controller, the workers (their draws are a pure function of seed, job and attempt: core/draws.py),
the WAL's position, segments and buffered record bodies, the snapshot files' bytes, the clients'
view and everything the checker knows (its violations so far included), and what the end of the
run reads from the lives before (their ends and first attempts). It leaves out only what differs
between such continuations without steering what comes next: each WAL record's chained CRC (and so
the segment bytes, and record order before the convergence), the bytes of the `.broken` copies a
recovery keeps of what it cut (their names stay: no code reads them again), the crash's own label,
the recovery's own figures and the clock's tie counters (replaced by event order).

The one verdict that reads those bytes is the checker's last one: the log on disk must verify from
the segment holding the last life's first LSN. After convergence both write the same record bodies
at the same LSNs into the same segments, framed by the real WAL code as crc32c(body, chain), which
passes the scan whatever the chain held; so the scan's verdict on what follows the convergence is
the same in both, and a merge requires (`prefix_ok`) that the merged continuation's log verifies up
to the convergence, from the segment its own final scan starts at, and that the one it merges with
verified to its end. A mutant that replaces the WAL writer may frame otherwise: its continuations
never merge. `crash_sweep(merge=False)` runs every continuation to its end instead; the
test_sweep tests show both give the same rows on the lifecycle sweeps and on every mutant.

Where to look is a matter of cost, not of soundness (a state not compared is only a merge missed):
writing a state down costs O(jobs), so it is done at the first PROBES event boundaries where no
client waits for an acknowledgement, and only for continuations that crashed at the same moment as
another group's (their restarts and every event after come at the same times) with a batch to
resend (otherwise what differed between them was durable, and stays)."""

from __future__ import annotations

import enum
import posixpath
from collections import deque
from hashlib import blake2b
from operator import attrgetter
from typing import Any

import orjson

from beaver_sim.sim.checker import _from
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.log_format import segment_seq, unframe
from beaver_sim.storage.wal import WriteAheadLog, scan

_JOB = attrgetter("id", "status", "attempt", "raw")  # a job as `_queue` writes it down
_SCALARS = frozenset((str, int, float, bool, type(None)))  # what `_Canon` writes down as it is

PROBES = 2  # states compared per continuation: the first event boundaries once clients are settled
POLLS = 64  # event boundaries looked at for those, at most (a cheap look: are clients waiting?)

# attributes that steer nothing to come, or that are keyed apart (by name: the objects they name)
_SKIP = {
    "WriteAheadLog": {"crc", "_undo", "_file", "_buf", "fs", "timer", "on_sync", "syncs"},
    "SnapshotStore": {"fs"},
    "Storage": {"fs", "report"},
    "Controller": {"counters"},  # metrics: counted, read by no decision
    "Checker": {"_token", "crash"},
    "Violation": {"crash", "token"},
}


class Merged(BaseException):
    """A continuation reached a state an earlier one ran on from: stop, and share its row."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__()
        self.row = row
        self.result: Any = None  # the merged continuation's own SimResult so far (`Run.resume`)


class Merger:
    """The states the finished continuations of one sweep task went through, and their rows."""

    def __init__(self) -> None:
        self.known: dict[bytes, dict[str, Any]] = {}
        self.seen: list[bytes] = []  # the states the running continuation has been through

    def arm(self, run: Any, controller: Any, completed_at_start: set[str]) -> None:
        """Compare the states of a continuation's second life (`Run.life` calls this once it has
        scheduled its first events) with those of the finished ones."""
        if run.m.wal_cls is not WriteAheadLog or not run.checker.open:
            return  # (no batch to resend: what differed was durable, and the states stay apart)
        clock, checker = controller.clock, run.checker
        probes, polls = [0], [0]

        def probe() -> None:
            live = clock.peek()
            polls[0] += 1
            if not (checker.open or controller.acks_waiting):  # clients waiting: states rarely meet yet
                try:
                    key = state_key(run, controller, completed_at_start, probe)
                except (ValueError, TypeError):  # a state it cannot write down: no merging
                    return
                row = self.known.get(key)
                if row is not None and prefix_ok(run, controller.storage):
                    raise Merged(row)
                self.seen.append(key)
                probes[0] += 1
            if probes[0] < PROBES and polls[0] < POLLS and live < float("inf"):
                clock.call_at(live, probe)  # after the events already due then: between two

        clock.call_at(clock.now(), probe)

    def start(self) -> None:
        """A continuation begins: it has been through no state yet."""
        self.seen = []

    def finished(self, row: dict[str, Any]) -> None:
        """The running continuation ended with `row`: later ones may merge into its states, if its
        log verified to the end (no violation of invariant 5 at all, to keep the argument short)."""
        if not any(inv == 5 for inv, _job, _detail in row["problems"]):
            self.known.update(dict.fromkeys(self.seen, row))
        self.seen = []


def prefix_ok(run: Any, storage: Any) -> bool:
    """Does the log written so far verify from where the checker's last scan will start? (What
    the continuation's recovery verified of it is not checked again: `run.known`, copied, since
    this log is the continuation's own.)"""
    life = run.out.lives[-1]
    view, first = _from(run.fs, run.cfg.wal_dir, life.start_lsn)
    kept = storage.snapshots.seqs()
    known = None if run.known is None else dict(run.known)
    return scan(view, run.cfg.wal_dir, max(kept[0] if kept else 0, first - 1), known=known).problem is None


def state_key(run: Any, controller: Any, completed_at_start: set[str], probe: Any) -> bytes:
    """The logical state of `run` between two events (the module docstring lists what is in it)."""
    clock, storage, checker = controller.clock, controller.storage, run.checker
    heap = sorted(e for e in clock.pending() if e[2] is not None and e[2] is not probe)
    names: dict[int, Any] = {
        id(run): "run",
        id(run.out): "out",
        id(controller): "controller",
        id(clock): "clock",
        id(storage): "storage",
        id(run.workers): "workers",
        id(storage.state): "queue",
        id(checker): "checker",
        id(run.fs): "fs",
        id(run.sim): "sim",
        id(run.cfg): "config",
        id(controller.config): "config",
    }
    names |= {id(e): ["event", i] for i, e in enumerate(heap)}
    c = _Canon(names)
    wal_dir, files = SimFS._norm(run.cfg.wal_dir), []
    for path, inode in sorted(run.fs.files.items()):
        if posixpath.dirname(path) == wal_dir and segment_seq(posixpath.basename(path)) is not None:
            files.append([path, len(inode.data)])  # chained CRCs: the bytes differ, the layout not
        elif path.endswith((".broken", ".removed")):
            files.append([path])  # what a recovery cut, kept for people: nothing reads it again
        else:
            files.append([path, blake2b(bytes(inode.data), digest_size=16).hexdigest()])
    wal = storage.wal
    state = [
        clock.now(),
        [[e[0], c(e[2]), c(e[3])] for e in heap],
        c.walk(storage.state),
        c.walk(controller),  # (the named parts are walked here, once; elsewhere, named)
        c.walk(storage),
        [_body(line) for line in wal.pending],  # bodies, without their CRCs
        _workers(c, run.workers),
        c.walk(checker),
        _rest(c, run, _RUN_PARTS),  # what else the run keeps between lives (next batch, ...)
        [[life.end, life.first_attempt] for life in run.out.lives],
        sorted(completed_at_start),
        files,
        sorted(run.fs.dirs),
    ]
    return blake2b(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS), digest_size=20).digest()


def _body(line: bytes) -> str:
    """A buffered log line's body (its CRC left out: chained, it differs between continuations)."""
    body = unframe(line[:-1])
    if body is None:
        raise ValueError("a buffered line the log format does not frame")  # (no merging)
    return body.decode()


class _Canon:
    """Objects as plain JSON values, the run's own parts by name (see `state_key`)."""

    def __init__(self, names: dict[int, Any]) -> None:
        self.names = names
        self.stack: set[int] = set()

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        name = self.names.get(id(obj))
        if name is not None:
            return name
        if isinstance(obj, enum.Enum):
            return obj.value
        if isinstance(obj, (bytes, bytearray)):
            return blake2b(bytes(obj), digest_size=16).hexdigest()
        if id(obj) in self.stack:
            raise ValueError("a cycle outside the run's named parts")
        self.stack.add(id(obj))
        try:
            return self.walk(obj)
        finally:
            self.stack.discard(id(obj))

    def walk(self, obj: Any) -> Any:
        """`obj`'s own value, even when it is one of the named parts."""
        plain = _PLAIN.get(type(obj).__name__)
        if plain is not None:
            return plain(self, obj)
        if isinstance(obj, (list, tuple, deque)):
            if len(obj) == 4 and isinstance(obj, list) and isinstance(obj[1], int) and obj[2] is None:
                return ["done-event", obj[0]]  # a clock entry run or cancelled: its tie counter aside
            if _SCALARS.issuperset(map(type, obj)):  # (ids, numbers: the pending FIFO, in one C pass)
                return list(obj)
            return [self(x) for x in obj]
        if isinstance(obj, dict):
            return [[self(k), self(v)] for k, v in obj.items()]
        if isinstance(obj, (set, frozenset)):
            return sorted(obj if _SCALARS.issuperset(map(type, obj)) else map(self, obj), key=repr)
        if hasattr(obj, "__func__"):  # a bound method
            return ["method", obj.__func__.__qualname__, self(obj.__self__)]
        if hasattr(obj, "__code__"):  # a function: a closure's cells are its state
            cells = [self(cell.cell_contents) for cell in obj.__closure__ or ()]
            return ["function", obj.__qualname__, cells]
        if isinstance(obj, BaseException):
            return ["error", type(obj).__name__, str(obj)]
        skip: set[str] = set()
        for cls in type(obj).__mro__:
            skip |= _SKIP.get(cls.__name__, set())
        kept = [k for k in _attrs(obj) if k not in skip]
        return [type(obj).__qualname__, *([k, self(getattr(obj, k))] for k in kept)]


def _attrs(obj: Any) -> list[str]:
    names = [k for cls in type(obj).__mro__ for k in getattr(cls, "__slots__", ())]
    return [k for k in [*names, *getattr(obj, "__dict__", {})] if hasattr(obj, k)]


def _queue(c: _Canon, q: Any) -> Any:
    """A JobQueue: its jobs (payloads as stored: JSON, checked at enqueue) and leases written down
    directly, the rest of it walked."""
    jobs = list(map(_JOB, q.jobs.values()))  # (tuples, in C: orjson writes a status as its value)
    leases = [[k, v.attempt, v.worker, v.deadline] for k, v in q.leases.items()]
    return ["JobQueue", jobs, leases, _rest(c, q, {"jobs", "leases"})]


def _checker(c: _Canon, k: Any) -> Any:
    """A Checker: the payloads clients sent (plain JSON), when each was acknowledged, the
    violations so far (not the crash's label nor the token: they name the point, rows do not
    carry them), and the rest of what it knows, walked; not `texts`, a cache of the sent payloads'
    JSON that a task's continuations share and fill as they go."""
    violations = [[v.invariant, v.job, v.detail] for v in k.violations]
    rest = _rest(c, k, {"submitted", "acked", "violations", "_token", "crash", "texts"})
    return ["Checker", k.submitted, k.acked, violations, rest]


def _rest(c: _Canon, obj: Any, done: set[str]) -> Any:
    return [[n, c(getattr(obj, n))] for n in _attrs(obj) if n not in done]


def _workers(c: _Canon, w: Any) -> Any:
    """Simulated workers: the attempts so far (plain tuples) and the rest of their state."""
    return [type(w).__qualname__, [list(a) for a in w.attempts], _rest(c, w, {"attempts", "clock"})]


# a `Run`'s attributes written down above, or the same in every continuation of a sweep (its inputs
# and the sweep's hooks)
_RUN_PARTS = {"sim", "cfg", "m", "checker", "batches", "workers", "out", "fs", "clock", "storage"}
_RUN_PARTS |= {"watch", "merger", "known"}
# class name -> how to write its large parts down directly (its other attributes: walked)
_PLAIN: dict[str, Any] = {"JobQueue": _queue, "Checker": _checker}

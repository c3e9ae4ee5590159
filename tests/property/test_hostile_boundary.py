"""Issue 17, the durable half, drawn by hypothesis: hostile job ids, payloads (deep, huge, Unicode,
big integers, odd floats), failure reasons and raw logs. The invariants:

- accepted => runnable: every record the job then gets (DISPATCH, FAIL, DEAD, ACK) fits
  max_record_bytes, the run goes on to the end, and the stored payload is the one sent, byte for byte;
- refused => nothing written: the log and the state are as before, and the error is one line;
- a job file's numbers are stored exactly as written or the file is refused, in one line;
- `wal verify` ok <=> recovery opens, for any log of well-checksummed records."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from beaver_sim.cli import read_jobs
from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.limits import MAX_DEPTH
from beaver_sim.core.repair import inspect
from beaver_sim.core.types import MIN_RECORD_BYTES, Abandoned, BeaverError, Config, JobStatus, OnResult
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import PROCESS, SimFS
from beaver_sim.sim.workers import Unprintable
from beaver_sim.storage.wal import WriteAheadLog

LIMIT = MIN_RECORD_BYTES  # the smallest allowed: hostile sizes stay cheap to draw
CONFIG = Config(data_dir="/data", worker_count=2, task_timeout=1.0, max_record_bytes=LIMIT, max_retry=3)
HOSTILE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ids: any text (control characters, escapes, astral planes, lone surrogates), some near the limit
ids = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(codec=None), min_size=1, max_size=40),
    st.sampled_from(["\ud800", "a\udfffb", "\x00"]),  # lone surrogates: not storable text
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x01", '"', "😀"]), st.integers(1, 2500)),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1, 2**64, 5e-324, -0.0, 1e308]),
)
leaves = st.one_of(
    st.none(), st.booleans(), numbers, st.text(max_size=30), st.text(alphabet='{[\\"', max_size=300)
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
)


def deep(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(depth - 1):
        payload = {"d": payload}
    return payload


payloads = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    st.builds(deep, st.integers(MAX_DEPTH - 2, MAX_DEPTH + 200)),
    st.builds(lambda n: {"pad": "p" * n}, st.integers(LIMIT - 200, LIMIT)),
    st.just([1, 2]),
)
reasons = st.one_of(
    st.text(max_size=50),
    st.builds(lambda c, n: c * n, st.sampled_from(["E", "\x00", "é", "\ud800"]), st.integers(0, 20_000)),
    st.builds(lambda t: ValueError(t), st.text(max_size=5000)),
    st.just(Unprintable()),
    st.just(None),
    st.integers(),
)


class Failing:
    """Workers whose every attempt fails with `reason` (or succeeds: `ok`)."""

    def __init__(self, clock: VirtualClock, reason: object, ok: bool) -> None:
        self.clock, self.reason, self.ok = clock, reason, ok

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        payload.clear()  # and a careless handler, too
        self.clock.call_later(0.1, done, job_id, attempt, self.ok, None if self.ok else self.reason)

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        return Abandoned(False)


def bodies(fs: SimFS) -> list[bytes]:
    out = []
    for name in sorted(fs.listdir("/data/wal")):
        out += [line.split(b" ", 2)[2] for line in fs.read_bytes(f"/data/wal/{name}").split(b"\n")[1:-1]]
    return out


@HOSTILE
@given(job_id=ids, payload=payloads, reason=reasons, ok=st.booleans())
def test_accepted_runs_to_the_end_refused_writes_nothing(
    job_id: str, payload: Any, reason: object, ok: bool
) -> None:
    fs, clock = SimFS(), VirtualClock()
    ctl = Controller(CONFIG, clock, Storage.from_config(fs, CONFIG), Failing(clock, reason, ok))
    ctl.start()
    ctl.enqueue([("first", {"n": 1})])
    clock.run()
    before = (bodies(fs), ctl.state.to_state())
    sent = orjson.dumps(payload) if isinstance(payload, dict) and _encodable(payload) else None
    try:
        ctl.enqueue([("other", {}), (job_id, payload)])
    except BeaverError as refused:
        event(f"refused: {type(refused).__name__}")
        assert "\n" not in str(refused) and len(str(refused)) < 600
        ctl.storage.wal.flush()
        assert (bodies(fs), ctl.state.to_state()) == before  # not even "other"
        return
    event("accepted")
    clock.run()  # to the end: every attempt fails (or succeeds), the job ends
    end = ctl.state.jobs[job_id]
    assert end.status is (JobStatus.COMPLETED if ok else JobStatus.DEAD)
    assert orjson.dumps(end.payload) == sent  # byte for byte, whatever the handler did to its copy
    ctl.stop()
    assert all(len(b) <= LIMIT for b in bodies(fs))
    crashed = fs.after_crash(PROCESS)
    assert inspect(crashed, "/data/wal", "/data/snap").ok
    back = Storage.from_config(crashed, CONFIG).state
    assert orjson.dumps(back.jobs[job_id].payload) == sent


def _encodable(payload: dict[str, Any]) -> bool:
    try:
        orjson.dumps(payload)
    except TypeError:
        return False
    return True


number_texts = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.builds(
        lambda m, e: f"{m}e{e}",
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.integers(-500, 500),
    ),
    st.sampled_from(
        ["1e-400", "-1e-400", "0e-999", "1e400", "123456789012345678901234567890", "0.0", "-0.0"]
    ),
)


@HOSTILE
@given(texts=st.lists(number_texts, min_size=1, max_size=4))
def test_a_job_files_numbers_are_stored_exactly_or_refused(tmp_path_factory: Any, texts: list[str]) -> None:
    path: Path = tmp_path_factory.mktemp("f") / "jobs.json"
    path.write_text('[{"id": "n", "payload": {"v": [' + ", ".join(texts) + "]}}]")
    exact = [Decimal(t) for t in texts]
    try:
        jobs = read_jobs(str(path), LIMIT)
    except BeaverError as refused:
        assert "\n" not in str(refused) and str(path) in str(refused) and "'n'" in str(refused)
        assert any(not _exact(t) for t in texts)
        return
    stored = json.loads(orjson.dumps(jobs[0][1]), parse_float=Decimal, parse_int=Decimal)["v"]
    for text, value, want in zip(texts, stored, exact, strict=True):
        assert _exact(text), text
        if isinstance(value, Decimal) and "." not in text and "e" not in text.lower():
            assert value == want  # integers: exactly
        else:
            assert value == Decimal(repr(float(text)))  # floats: the nearest double, as written


def _exact(text: str) -> bool:
    """Can this number text be stored as written (an int within 64 bits, a finite float that is not
    a nonzero literal rounded to zero)?"""
    if "." not in text and "e" not in text.lower():
        return -(2**63) <= int(text) < 2**64
    f = float(text)
    return f not in (float("inf"), float("-inf")) and (f != 0 or Decimal(text) == 0)


kinds = st.sampled_from([R.ENQUEUE, R.DISPATCH, R.ACK, R.FAIL, R.TIMEOUT, R.REQUEUE, R.DEAD, R.CONFIG])
raw_records = st.builds(
    lambda kind, job, attempt, n: (
        {"type": kind, "job": job, "payload": {}, "attempt": attempt}
        | {"worker": 0, "deadline": 1.0, "error": "e", "reason": "r", "completed_retention": n}
    ),
    kinds,
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 3),
    st.integers(-1, 2),
)


@HOSTILE
@given(recs=st.lists(raw_records, max_size=25))
def test_verify_ok_if_and_only_if_recovery_opens(recs: list[dict[str, Any]]) -> None:
    fs = SimFS()
    wal, _, _ = WriteAheadLog.open(fs, "/data/wal")
    for rec in recs:
        wal.append({"seq": 0, **rec})
    wal.close()
    ok = inspect(fs, "/data/wal", "/data/snap").ok
    event(f"verify ok: {ok}")
    try:
        Storage.open(fs, "/data").close()
    except BeaverError:
        assert not ok
    else:
        assert ok

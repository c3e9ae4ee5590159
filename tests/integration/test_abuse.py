"""Real processes under abuse: several `beaver enqueue` clients submit concurrently while `beaver
run` is killed with SIGKILL at random moments (mid-enqueue, mid-snapshot: snapshots every 50 ms and
segments of 4 KiB make both likely), and `wal repair --yes` is itself killed mid-repair. At the end
every job whose enqueue exited 0 is completed or dead, the log shows no dispatch of a job after its
ACK, and `wal verify` passes. Bounded: about half a minute."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.core.durable import Storage
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.demo import RunProcess
from beaver_sim.runtime.service import read_state
from beaver_sim.storage.fs import RealFS

pytestmark = pytest.mark.integration

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
RUN = [
    *("--workers", "4", "--timeout", "300ms", "--work-min", "5ms", "--work-max", "40ms"),
    *("--failure-rate", "0.2", "--max-retry", "3", "--snapshot-interval", "50ms", "--metrics-port", "0"),
]


def beaver(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=timeout)


def start(data_dir: str) -> RunProcess:
    """`beaver run`, retried while a `beaver enqueue` that found no controller holds the lock."""
    deadline = time.monotonic() + 60
    while True:
        run = RunProcess([*BEAVER, "run", "--data-dir", data_dir, *RUN])
        try:
            run.wait_line(re.compile("^ready"), 60)
            return run
        except BeaverError:
            run.stop()
            assert time.monotonic() < deadline, "beaver run never started"
            time.sleep(0.05)


class Client(threading.Thread):
    """Enqueues batches of fresh jobs one after another; remembers which were acknowledged."""

    def __init__(self, name: str, data_dir: str, tmp: Path, batches: int) -> None:
        super().__init__(daemon=True)
        self.name_, self.data_dir, self.tmp, self.batches = name, data_dir, tmp, batches
        self.acked: list[str] = []
        self.failed: list[str] = []

    def run(self) -> None:
        for b in range(self.batches):
            ids = [f"{self.name_}-{b}-{i}" for i in range(15)]
            path = self.tmp / f"{self.name_}-{b}.json"
            path.write_bytes(orjson.dumps([{"id": i, "payload": {"type": "compute"}} for i in ids]))
            out = beaver("enqueue", "--data-dir", self.data_dir, "--file", str(path))
            (self.acked if out.returncode == 0 else self.failed).extend(ids)


def test_kill_9_at_random_moments_under_concurrent_enqueues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BEAVER_SEGMENT_BYTES", "4096")
    monkeypatch.chdir(tmp_path)
    data_dir = str(tmp_path / "d")
    rng = random.Random(7)
    run = start(data_dir)
    clients = [Client(f"c{n}", data_dir, tmp_path, batches=8) for n in range(3)]
    for c in clients:
        c.start()
    kills = mid_run = 0
    try:
        while any(c.is_alive() for c in clients) and kills < 6:
            time.sleep(rng.uniform(0.1, 0.6))
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait()
            kills += 1
            st = read_state(Config(data_dir=data_dir)).state.stats()
            mid_run += st["pending"] + st["in_flight"] > 0 or any(c.is_alive() for c in clients)
            run = start(data_dir)
        for c in clients:
            c.join(timeout=120)
        acked = [i for c in clients for i in c.acked]
        deadline = time.monotonic() + 60
        while True:
            st = read_state(Config(data_dir=data_dir)).state.stats()
            if st["pending"] + st["in_flight"] == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=60) == 0
    finally:
        run.stop()
    assert kills >= 3 and mid_run == kills  # every kill landed while work was going on
    assert len(acked) > 0
    q = Storage.open(RealFS(), data_dir).state
    q.validate()
    for job in acked:  # acknowledged means durable, and it ran to an end
        assert q.jobs[job].status in (JobStatus.COMPLETED, JobStatus.DEAD), job
    assert set(q.jobs) <= {i for c in clients for i in c.acked + c.failed}
    check_history(data_dir)
    verify = beaver("wal", "verify", "--data-dir", data_dir)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def check_history(data_dir: str) -> None:
    """What the log still holds: no DISPATCH of a job after its ACK, attempts numbered upward."""
    dump = beaver("wal", "dump", "--json", "--data-dir", data_dir)
    assert dump.returncode == 0, dump.stderr
    acked: set[str] = set()
    attempts: dict[str, int] = {}
    for line in dump.stdout.splitlines():
        rec: dict[str, Any] = orjson.loads(line)
        job, kind = rec["job"], rec["type"]
        if kind == "dispatch":
            assert job not in acked, f"{job} dispatched after its ACK (seq {rec['seq']})"
            assert rec["attempt"] > attempts.get(job, 0), f"{job}: attempt {rec['attempt']} repeated"
            attempts[job] = rec["attempt"]
        elif kind == "ack":
            acked.add(job)


def test_wal_repair_killed_mid_repair_then_rerun_ends_where_one_clean_repair_ends(tmp_path: Path) -> None:
    """A damaged log (a missing segment after the newest snapshot): `wal repair --yes` killed at
    random moments, then run to the end, leaves the state one uninterrupted repair leaves."""
    from tests.unit.test_operator_tools import compacted

    base = compacted(tmp_path / "base")
    segments = sorted((base / "wal").glob("wal-*.log"))
    segments[-3].unlink()
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    assert beaver("wal", "repair", "--yes", "--data-dir", str(clean)).returncode == 0
    expected = Storage.open(RealFS(), str(clean)).state.to_state()
    rng = random.Random(3)
    for attempt in range(6):
        d = tmp_path / f"try{attempt}"
        shutil.copytree(base, d)
        proc = subprocess.Popen(
            [*BEAVER, "wal", "repair", "--yes", "--data-dir", str(d)], stdout=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(3):
            out = beaver("wal", "repair", "--yes", "--data-dir", str(d))
            assert out.returncode == 0, out.stdout + out.stderr
            if "nothing to repair" in out.stdout:
                break
        assert Storage.open(RealFS(), str(d)).state.to_state() == expected, attempt


def test_a_write_error_stops_beaver_run_in_one_line_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    """A real I/O error on a real process: RLIMIT_FSIZE makes write(2) past 24 KiB fail with EFBIG
    (SIGXFSZ ignored), as a full disk fails with ENOSPC. Enqueues stop being acknowledged, `beaver
    run` exits non-zero with one line naming the file, and a restart without the limit has every
    acknowledged job."""
    import resource

    data_dir = str(tmp_path / "d")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (24 << 10, 24 << 10))

    proc = subprocess.Popen(
        [*BEAVER, "run", "--data-dir", data_dir, *RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        # appended segments: a preallocated one would meet the limit when it is created, not at a write
        env={**os.environ, "BEAVER_WAL_PREALLOCATE": "none"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ready"):
                break
        acked: list[str] = []
        for b in range(60):
            ids = [f"b{b}-{i}" for i in range(10)]
            path = tmp_path / f"{b}.json"
            path.write_bytes(
                orjson.dumps([{"id": i, "payload": {"type": "noop", "pad": "x" * 40}} for i in ids])
            )
            out = beaver("enqueue", "--data-dir", data_dir, "--file", str(path), timeout=30)
            if out.returncode != 0:
                break
            acked += ids
        else:
            pytest.fail("the file size limit was never reached")
        code = proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0 and acked
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "File too large" in errors[0] and "Traceback" not in err, err
    run = start(data_dir)  # no limit now
    try:
        q = read_state(Config(data_dir=data_dir)).state
        assert set(acked) <= set(q.jobs)  # nothing acknowledged was lost
    finally:
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(timeout=60)

"""`beaver run` killed with SIGKILL while a forked child writes a snapshot (issue 20): the child dies
with it (no writer outlives the lock), the next start removes the `.tmp`, and every job comes back
from the older snapshot and the WAL. A real process, a state large enough that a snapshot takes
a while, and a kill the moment the child's temporary file appears."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.demo import RunProcess
from beaver_sim.runtime.service import read_state
from beaver_sim.storage.fs import RealFS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

JOBS = 60_000
ATTEMPTS = 5


def holders(data_dir: str) -> list[int]:
    """PIDs of processes (the run or a snapshot child, which has its command line) serving `data_dir`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if data_dir.encode() in cmdline and state != "Z":
            pids.append(int(pid))
    return pids


def test_kill_9_while_the_child_writes_a_snapshot_loses_nothing(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "d")
    config = Config(data_dir=data_dir, fsync="never")
    storage = Storage.from_config(RealFS(), config)  # a log of JOBS pending jobs, no snapshot yet
    for i in range(JOBS):
        storage.append(R.enqueue(f"job-{i:06d}", {"type": "compute", "n": i}))
    storage.close()

    flags = ["--workers", "2", "--work-min", "1s", "--work-max", "2s", "--timeout", "10s"]
    flags += ["--snapshot-interval", "50ms", "--metrics-port", "0"]
    env = {**os.environ, "BEAVER_SNAPSHOT_LOG_RATIO": "0"}  # a snapshot whenever anything was logged
    snap = Path(data_dir) / "snap"
    # The kill must land while a child writes. On a loaded machine the child may finish between the
    # test seeing its .tmp and the kill: then nothing was tested, so start again (same directory).
    cmd = [sys.executable, "-m", "beaver_sim.cli", "run", "--data-dir", data_dir, *flags]
    for _ in range(ATTEMPTS):
        run = RunProcess(cmd, env=env)
        try:
            run.wait_line(re.compile(r"^ready"), 60)
            deadline = time.monotonic() + 60
            while not any(p.name.endswith(".tmp") for p in snap.iterdir()):  # a child is writing
                assert time.monotonic() < deadline, "no snapshot was ever being written"
                time.sleep(0.0005)
            os.kill(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
            kept = sorted(p.name for p in snap.iterdir())
        finally:
            run.stop()
        if any(n.endswith(".tmp") for n in kept):
            break
    else:
        pytest.fail(f"in {ATTEMPTS} runs every snapshot child finished before the kill reached its parent")
    time.sleep(1.0)  # a child still alive would have finished by now, renaming its .tmp into place
    assert sorted(p.name for p in snap.iterdir()) == kept
    assert holders(data_dir) == []  # PR_SET_PDEATHSIG: the child went with its parent

    found = read_state(config)  # the files as the kill left them verify
    assert found.ok and found.state.stats()["jobs"] == JOBS
    again = Storage.from_config(RealFS(), config)  # recovery: the .tmp is removed, every job is back
    try:
        assert not [p for p in snap.iterdir() if p.name.endswith(".tmp")]
        st = again.state.stats()
        assert st["jobs"] == JOBS and st["pending"] + st["in_flight"] + st["completed"] + st["dead"] == JOBS
        again.state.validate()
    finally:
        again.close()

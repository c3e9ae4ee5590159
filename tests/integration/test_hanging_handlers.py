"""Handlers that never return, against real `beaver run` processes: hung jobs first, healthy ones
after, on each executor; every healthy job completes and each hung one ends dead without holding a
worker. Then kill -9 while handler processes hang: none of them outlives `beaver run`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.core import records as R
from beaver_sim.core.types import Config, JobStatus
from beaver_sim.demo import RunProcess
from beaver_sim.runtime.server import request
from beaver_sim.runtime.service import read_state
from beaver_sim.storage import wal
from beaver_sim.storage.fs import RealFS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
READY = re.compile(r"^ready")

HANDLERS = '''
import signal, threading, time

def forever(payload):
    """Stuck in Python: a thread interrupt reaches it."""
    while True:
        time.sleep(0.02)

def deaf(payload):
    """Ignores SIGTERM and blocks in C: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Event().wait()

def quick(payload):
    return payload
'''
FLAGS = (
    *("--workers", "4", "--timeout", "300ms", "--max-retry", "3"),
    *("--snapshot-interval", "0", "--metrics-port", "0", "--failure-rate", "0"),
)
MARKER = "HANGTEST_MARKER"


def beaver(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=120)


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, list[RunProcess]]]:
    """A handler module and a config naming it (the working directory is tmp_path, on sys.path of
    `beaver run`); yields the data dir and the runs started, killed at the end."""
    (tmp_path / "hangmod.py").write_text(HANDLERS)
    (tmp_path / "hang.yaml").write_text(
        "handlers:\n  forever: hangmod:forever\n  deaf: hangmod:deaf\n  quick: hangmod:quick\n"
    )
    runs: list[RunProcess] = []
    yield str(tmp_path / "d"), runs
    for run in runs:
        run.stop()


def start(runs: list[RunProcess], data_dir: str, executor: str) -> RunProcess:
    argv = [*BEAVER, "run", "--data-dir", data_dir, "--config", "hang.yaml", *FLAGS, "--executor", executor]
    run = RunProcess(argv)
    runs.append(run)
    run.wait_line(READY, 60)
    return run


def enqueue(tmp_path: Path, data_dir: str, prefix: str, kind: str, n: int) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    path = tmp_path / f"{prefix}.json"
    path.write_bytes(orjson.dumps([{"id": i, "payload": {"type": kind}} for i in ids]))
    out = beaver("enqueue", "--file", str(path), "--data-dir", data_dir, "--config", "hang.yaml")
    assert out.returncode == 0, out.stderr
    return ids


def status(data_dir: str) -> dict[str, Any]:
    return request(data_dir, {"op": "status"})["status"]


def jobs(data_dir: str) -> dict[str, Any]:
    return read_state(Config(data_dir=data_dir)).state.jobs


def dead_reasons(data_dir: str) -> dict[str, str]:
    found: dict[str, str] = {}

    def keep(rec: dict[str, Any], _lsn: int) -> None:
        if rec["type"] == R.DEAD:
            found[rec["job"]] = rec["reason"]

    wal.scan(RealFS(), f"{data_dir}/wal", on_record=keep)
    return found


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_hung_handlers_do_not_starve_the_healthy_jobs_after_them(
    tmp_path: Path, setup: tuple[str, list[RunProcess]], executor: str
) -> None:
    data_dir, runs = setup
    start(runs, data_dir, executor)
    hung = enqueue(tmp_path, data_dir, "hung", "forever", 8)
    # two rounds of timeouts: under the old rule every thread of the pool is now held for good
    wait_until(lambda: sum(jobs(data_dir)[j].attempt for j in hung) >= 12, 30)
    healthy = enqueue(tmp_path, data_dir, "ok", "quick", 8)
    wait_until(lambda: (st := status(data_dir))["completed"] + st["dead"] == 16, 30)
    state = jobs(data_dir)
    assert {j: state[j].status for j in healthy} == dict.fromkeys(healthy, JobStatus.COMPLETED)
    assert all(state[j].attempt == 1 for j in healthy)  # none spent an attempt waiting for a worker
    assert {j: (state[j].status, state[j].attempt) for j in hung} == dict.fromkeys(hung, (JobStatus.DEAD, 3))
    how = "handler killed" if executor == "process" else "handler interrupted"
    assert set(dead_reasons(data_dir).values()) == {f"timeout: {how}"}


def marked(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries `marker` (every descendant of that run)."""
    needle = f"{MARKER}={marker}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_kill_9_leaves_no_handler_process_behind(
    tmp_path: Path, setup: tuple[str, list[RunProcess]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, runs = setup
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv(MARKER, marker)
    run = start(runs, data_dir, "process")
    hung = enqueue(tmp_path, data_dir, "hung", "deaf", 8)
    # run, forkserver, resource tracker and one process per worker
    wait_until(lambda: len(marked(marker)) >= 3 + 4, 30)
    # a deaf handler ignores SIGTERM: its slot is held (status shows it) until SIGKILL
    wait_until(lambda: status(data_dir)["stuck_workers"], 10)
    wait_until(lambda: sum(jobs(data_dir)[j].attempt for j in hung) >= 6, 30)  # some killed, replaced
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    wait_until(lambda: not marked(marker), 10)
    run = start(runs, data_dir, "process")  # the next life finds nothing of the previous one
    wait_until(lambda: all(jobs(data_dir)[j].status is JobStatus.DEAD for j in hung), 30)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=30) == 0
    wait_until(lambda: not marked(marker), 10)

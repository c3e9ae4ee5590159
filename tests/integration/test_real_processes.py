"""`beaver` as real processes: kill -9 under load and restart, enqueue and status while running,
a second `run` refused, recovery of the seed's 100 jobs, /metrics over HTTP, `beaver demo`.
Every wait polls until a deadline; work durations are short so the whole file takes seconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.demo import RECOVERED, RunProcess
from beaver_sim.runtime.server import request
from beaver_sim.runtime.service import read_state

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

REPO = Path(__file__).resolve().parents[2]
SEED_JOBS = REPO / "data" / "jobs.json"
BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
FAST = [
    *("--workers", "4", "--timeout", "300ms", "--work-min", "10ms", "--work-max", "80ms"),
    *("--failure-rate", "0.2", "--max-retry", "3", "--snapshot-interval", "200ms", "--metrics-port", "0"),
]
READY = re.compile(r"^ready")


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "d")


@pytest.fixture
def runs() -> Iterator[list[RunProcess]]:
    """Every `beaver run` a test starts; whatever is still alive is killed at the end."""
    started: list[RunProcess] = []
    yield started
    for run in started:
        run.stop()


def start(runs: list[RunProcess], data_dir: str, *extra: str) -> RunProcess:
    run = RunProcess([*BEAVER, "run", "--data-dir", data_dir, *FAST, *extra])
    runs.append(run)
    run.wait_line(READY, 60)
    return run


def beaver(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=120)


def status(data_dir: str) -> dict[str, Any]:
    out = beaver("status", "--json", "--data-dir", data_dir)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def wait_until(check: Any, timeout: float = 60.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def write_jobs(path: Path, n: int, prefix: str = "job") -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    path.write_bytes(orjson.dumps([{"id": i, "payload": {"type": "compute", "n": n}} for i in ids]))
    return ids


def assert_each_ended_once(data_dir: str, ids: list[str]) -> None:
    """From the files: every acknowledged job is known, completed or dead, and nothing else is."""
    q = read_state(Config(data_dir=data_dir)).state
    q.validate()
    assert sorted(q.jobs) == sorted(ids)
    assert {q.jobs[i].status for i in ids} <= {JobStatus.COMPLETED, JobStatus.DEAD}
    assert q.counts[JobStatus.COMPLETED] + q.counts[JobStatus.DEAD] == len(ids)
    assert all(1 <= q.jobs[i].attempt <= 3 for i in ids)


def ended(st: dict[str, Any]) -> int:
    return st["completed"] + st["dead"]


def stop(run: RunProcess) -> None:
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=30) == 0


def test_kill_9_under_load_then_every_acknowledged_job_ends_exactly_once(
    tmp_path: Path, data_dir: str, runs: list[RunProcess]
) -> None:
    ids = write_jobs(tmp_path / "jobs.json", 300)
    run = start(runs, data_dir)
    out = beaver("enqueue", "--file", str(tmp_path / "jobs.json"), "--data-dir", data_dir)
    assert out.returncode == 0 and "enqueued 300 jobs" in out.stdout, out.stderr
    wait_until(lambda: ended(status(data_dir)) >= 60)
    for _ in range(2):  # twice: the second crash hits a log that already holds a recovery
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        before = read_state(Config(data_dir=data_dir)).state.stats()
        assert before["jobs"] == 300  # acknowledged means durable
        run = start(runs, data_dir)
        if ended(before) < 300:
            wait_until(lambda b=before: ended(status(data_dir)) > ended(b))
    wait_until(lambda: ended(status(data_dir)) == 300)
    stop(run)
    assert_each_ended_once(data_dir, ids)


def test_enqueue_and_status_while_running_and_after(
    tmp_path: Path, data_dir: str, runs: list[RunProcess]
) -> None:
    first = write_jobs(tmp_path / "a.json", 20, "a")
    run = start(runs, data_dir)
    st = status(data_dir)
    assert st["running"] is True and st["pid"] == run.proc.pid and st["jobs"] == 0
    out = beaver("enqueue", "--file", str(tmp_path / "a.json"), "--data-dir", data_dir)
    assert out.returncode == 0 and "via the running controller" in out.stdout
    again = beaver("enqueue", "--file", str(tmp_path / "a.json"), "--data-dir", data_dir)
    assert again.returncode == 0 and "0 new, 20 already present" in again.stdout  # a retry is free
    (tmp_path / "a2.json").write_bytes(orjson.dumps([{"id": first[0], "payload": {"other": 1}}]))
    clash = beaver("enqueue", "--file", str(tmp_path / "a2.json"), "--data-dir", data_dir)
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "different payload" in clash.stderr
    second = write_jobs(tmp_path / "b.json", 20, "b")
    assert beaver("enqueue", "--file", str(tmp_path / "b.json"), "--data-dir", data_dir).returncode == 0
    wait_until(lambda: ended(status(data_dir)) == 40)
    text = beaver("status", "--data-dir", data_dir).stdout
    assert f"running (pid {run.proc.pid})" in text
    stop(run)
    st = status(data_dir)
    assert st["running"] is False and ended(st) == 40 and st["pending"] == st["in_flight"] == 0
    assert_each_ended_once(data_dir, first + second)


def test_a_second_run_is_refused_naming_the_holder(data_dir: str, runs: list[RunProcess]) -> None:
    run = start(runs, data_dir)
    out = beaver("run", "--data-dir", data_dir, "--metrics-port", "0")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"PID {run.proc.pid}" in out.stderr
    stop(run)


def test_recovery_of_the_seed_100_jobs_is_under_3_seconds(data_dir: str, runs: list[RunProcess]) -> None:
    """The seed's TestCrashRecovery: 100 jobs, some done, crash, restart in < 3 s, all end once."""
    ids = [job["id"] for job in orjson.loads(SEED_JOBS.read_bytes())]
    run = start(runs, data_dir)
    assert beaver("enqueue", "--file", str(SEED_JOBS), "--data-dir", data_dir).returncode == 0
    wait_until(lambda: ended(status(data_dir)) >= 20)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    run = RunProcess([*BEAVER, "run", "--data-dir", data_dir, *FAST])
    runs.append(run)
    m = run.wait_line(RECOVERED, 60)
    assert float(m.group(1)) < 3.0 and int(m.group(2)) > 0
    wait_until(lambda: ended(status(data_dir)) == 100)
    stop(run)
    assert_each_ended_once(data_dir, ids)


def test_metrics_endpoint_is_scraped_over_http(tmp_path: Path, data_dir: str, runs: list[RunProcess]) -> None:
    write_jobs(tmp_path / "jobs.json", 30)
    run = start(runs, data_dir)
    url = run.wait_line(re.compile(r"^metrics: (\S+)"), 5).group(1)
    assert url.startswith("http://127.0.0.1:")
    assert beaver("enqueue", "--file", str(tmp_path / "jobs.json"), "--data-dir", data_dir).returncode == 0
    wait_until(lambda: ended(status(data_dir)) == 30)
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert names >= {
        "queue_jobs_dispatched_total",
        "queue_jobs_completed_total",
        "queue_jobs_retried_total",
        "queue_jobs_dead_total",
        "queue_jobs_timeout_total",
        "queue_job_duration_seconds_bucket",
        "queue_recovery_time_seconds",
        "queue_depth",
        "queue_stale_results_total",
        "wal_fsync_duration_seconds_bucket",
    }
    st = status(data_dir)
    assert samples[("queue_jobs_completed_total", ())] == st["completed"]
    assert samples[("queue_jobs_dead_total", ())] == st["dead"]
    assert samples[("queue_depth", ())] == 0
    assert samples[("wal_fsync_duration_seconds_count", ())] > 0
    stop(run)


def test_run_exit_when_idle_drains_jobs_enqueued_offline(tmp_path: Path, data_dir: str) -> None:
    ids = write_jobs(tmp_path / "jobs.json", 40)
    out = beaver("enqueue", "--create", "--file", str(tmp_path / "jobs.json"), "--data-dir", data_dir)
    assert out.returncode == 0 and "written directly" in out.stdout
    done = subprocess.run([*BEAVER, "run", "--data-dir", data_dir, *FAST, "--exit-when-idle"], timeout=120)
    assert done.returncode == 0
    assert_each_ended_once(data_dir, ids)


def test_beaver_demo_passes(tmp_path: Path) -> None:
    config = tmp_path / "fast.yaml"
    config.write_text(
        "worker_count: 8\ntask_timeout: 300ms\nwork_min: 10ms\nwork_max: 100ms\nfailure_rate: 0.2\n"
    )
    out = subprocess.run(
        [
            *BEAVER,
            "demo",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "demo"),
            "--jobs",
            str(SEED_JOBS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovery took" in out.stdout and "demo passed" in out.stdout
    assert "an attempt still running after 300 ms times out; 3 attempts, then dead" in out.stdout
    assert f"data dir kept: {tmp_path / 'demo'}" in out.stdout
    dead = int(re.search(r"final status \(from the files\): completed \d+, dead (\d+)", out.stdout)[1])
    explained = f"dead {dead}: each of those jobs failed or timed out on all 3 attempts" in out.stdout
    assert explained == (dead > 0)
    assert_each_ended_once(
        str(tmp_path / "demo"), [job["id"] for job in orjson.loads(SEED_JOBS.read_bytes())]
    )


def test_operator_tools_on_a_compacted_directory_after_kill_9(
    tmp_path: Path, data_dir: str, runs: list[RunProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots taken and old segments deleted, then kill -9: `wal verify` passes, `wal dump`
    prints the log that is left, `wal repair` has nothing to do and changes nothing."""
    monkeypatch.setenv("BEAVER_SEGMENT_BYTES", "4096")
    run = start(runs, data_dir)
    ids: list[str] = []
    for batch in range(3):
        ids += write_jobs(tmp_path / f"b{batch}.json", 40, prefix=f"b{batch}")
        out = beaver("enqueue", "--file", str(tmp_path / f"b{batch}.json"), "--data-dir", data_dir)
        assert out.returncode == 0, out.stderr
        n = len(ids)
        wait_until(lambda n=n: ended(status(data_dir)) == n)
    wal_dir = Path(data_dir) / "wal"
    wait_until(lambda: not (wal_dir / "wal-00000000000000000001.log").exists())  # compacted
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    files = {p.name: p.read_bytes() for p in sorted(Path(data_dir).rglob("*")) if p.is_file()}
    verify = beaver("wal", "verify", "--json", "--data-dir", data_dir)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    summary = orjson.loads(verify.stdout)
    assert summary["ok"] and summary["snapshot_seq"] > 0 and summary["first_seq"] > 1
    dump = beaver("wal", "dump", "--json", "--data-dir", data_dir)
    assert dump.returncode == 0, dump.stderr
    assert orjson.loads(dump.stdout.splitlines()[0])["seq"] == summary["first_seq"]
    repair = beaver("wal", "repair", "--yes", "--data-dir", data_dir)
    assert repair.returncode == 0 and "nothing to repair" in repair.stdout, repair.stdout + repair.stderr
    assert {p.name: p.read_bytes() for p in sorted(Path(data_dir).rglob("*")) if p.is_file()} == files
    assert_each_ended_once(data_dir, ids)


def test_data_files_are_owner_only(tmp_path: Path, data_dir: str, runs: list[RunProcess]) -> None:
    """Payloads may be private: every file beaver writes is 0600 and every directory 0700."""
    old = os.umask(0o002)  # a permissive umask does not widen them
    try:
        write_jobs(tmp_path / "jobs.json", 20)
        out = beaver("enqueue", "--create", "--file", str(tmp_path / "jobs.json"), "--data-dir", data_dir)
        assert out.returncode == 0, out.stderr
        run = start(runs, data_dir)
        wait_until(lambda: ended(status(data_dir)) == 20)
        stop(run)
    finally:
        os.umask(old)
    paths = [Path(data_dir), *Path(data_dir).rglob("*")]
    assert any(p.name.startswith("snap-") for p in paths)
    for p in paths:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {oct(mode)}"


def test_clients_retrying_through_a_kill_9_enqueue_every_job_exactly_once(
    tmp_path: Path, data_dir: str, runs: list[RunProcess]
) -> None:
    """Retry-safe enqueue on real processes: 10 clients each send a file of 20 jobs and resend it
    until `beaver enqueue` exits 0; `beaver run` is killed with -9 while they are in flight and
    started again. Every job is then in the log exactly once (one ENQUEUE record), with its payload."""
    files = {f"c{c}": write_jobs(tmp_path / f"c{c}.json", 20, f"c{c}") for c in range(10)}
    keep_log = ("--snapshot-interval", "0")  # no compaction: the log keeps every ENQUEUE to count
    run = start(runs, data_dir, *keep_log)
    answers: dict[str, dict[str, Any]] = {}
    tries: dict[str, int] = {}

    def client(name: str) -> subprocess.Popen[str]:
        tries[name] = tries.get(name, 0) + 1
        argv = [
            *BEAVER,
            "enqueue",
            "--json",
            "--file",
            str(tmp_path / f"{name}.json"),
            "--data-dir",
            data_dir,
        ]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    clients = {name: client(name) for name in files}
    # the first job is in: asked over the socket, which answers in a millisecond (reading the files,
    # a preallocated segment's zeros included, takes long enough for every client to finish)
    wait_until(lambda: request(data_dir, {"op": "status"}, timeout=5)["status"]["jobs"] > 0, 30, 0.002)
    unanswered_at_kill = sum(proc.poll() is None for proc in clients.values())
    run.proc.send_signal(signal.SIGKILL)  # some enqueues are answered, some in flight, some not sent
    run.proc.wait()
    deadline = time.monotonic() + 50
    restarted = False
    while clients:
        assert time.monotonic() < deadline, f"clients still retrying: {sorted(clients)}"
        for name, proc in list(clients.items()):
            if proc.poll() is None:
                continue
            out, err = proc.communicate()
            if proc.returncode == 0:
                assert out.strip(), f"{name}: exit 0 without an answer; stderr: {err}"
                answers[name] = orjson.loads(out)
                del clients[name]
            else:  # the controller died under it, or is restarting: send the same file again
                assert "different payload" not in err, err
                clients[name] = client(name)
        if not restarted:
            try:
                start(runs, data_dir, *keep_log)
                restarted = True
            except BeaverError:  # a client held the lock, writing directly: start it again
                pass
        time.sleep(0.05)
    assert all(a["new"] + a["already_present"] == 20 and a["durable"] is True for a in answers.values())
    # the kill hit clients mid-enqueue (each retries, inside `beaver enqueue` or by sending again)
    assert unanswered_at_kill > 0
    dump = beaver("wal", "dump", "--json", "--data-dir", data_dir)
    enqueues = [r["job"] for r in map(orjson.loads, dump.stdout.splitlines()) if r["type"] == "enqueue"]
    everything = sorted(i for ids in files.values() for i in ids)
    assert sorted(enqueues) == everything  # each job logged exactly once
    q = read_state(Config(data_dir=data_dir)).state
    assert sorted(q.jobs) == everything
    assert all(q.jobs[i].payload == {"type": "compute", "n": 20} for i in everything)


def test_a_metrics_port_in_use_fails_before_anything_is_created(tmp_path: Path, data_dir: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = beaver("run", "--data-dir", data_dir, "--metrics-port", str(port))
    assert out.returncode == 2 and f"127.0.0.1:{port}" in out.stderr and out.stderr.count("\n") == 1
    assert not os.path.exists(data_dir)  # no LOCK, no wal/, no snap/

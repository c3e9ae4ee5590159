"""Issue 17, the durable half, against real `beaver run` / `beaver enqueue` processes: a handler
raising a 2 MB error becomes a bounded FAIL and run keeps serving; the issue's retention change
(retention 2, A, three more, A again, kill -9, restart with retention 0) opens; an oversized job is
refused before a data directory exists."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.core import records as R
from beaver_sim.demo import RunProcess
from tests.integration.test_real_processes import beaver, runs, start  # noqa: F401 (runs: a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

HOSTILE_FLAGS = ("--failure-rate", "0", "--max-retry", "2", "--timeout", "5s")  # over FAST's


def enqueue(data: str, jobs: list[dict[str, Any]], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / f"jobs-{time.monotonic_ns()}.json"
    path.write_bytes(orjson.dumps(jobs))
    return beaver("enqueue", "--create", "--data-dir", data, "--file", str(path))


def status(data: str) -> dict[str, Any]:
    out = beaver("status", "--data-dir", data, "--json")
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def wait_for(data: str, done: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (s := status(data))["completed"] + s["dead"] + s.get("dropped", 0) < done:  # dropped: ended
        assert time.monotonic() < deadline, s
        time.sleep(0.05)


def test_a_handler_raising_a_2mb_error_is_a_bounded_fail_and_run_keeps_serving(
    tmp_path: Path,
    runs: list[RunProcess],  # noqa: F811 (the imported fixture)
) -> None:
    (tmp_path / "hostmod.py").write_text('def huge(p):\n    raise ValueError("E" * 2_000_000)\n')
    (tmp_path / "h.yaml").write_text("handlers:\n  huge: hostmod:huge\n")
    data = str(tmp_path / "d")
    run = start(runs, data, *HOSTILE_FLAGS, "--config", str(tmp_path / "h.yaml"))
    jobs = [{"id": "poison", "payload": {"type": "huge"}}]
    jobs += [{"id": f"ok{i}", "payload": {}} for i in range(6)]
    assert enqueue(data, jobs, tmp_path).returncode == 0
    wait_for(data, 7)
    assert run.proc.poll() is None  # still serving
    s = status(data)
    assert (s["completed"], s["dead"]) == (6, 1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=60) == 0
    dump = beaver("wal", "dump", "--json", "--data-dir", data)
    recs = [orjson.loads(line) for line in dump.stdout.splitlines()]
    fails = [r for r in recs if r["type"] in (R.FAIL, R.DEAD)]
    assert [r["type"] for r in fails] == [R.FAIL, R.DEAD]
    for r in fails:
        text = r.get("error", r.get("reason"))
        cut = "...[cut: " in text or "more characters]" in text  # by the core's bound or the runtime's
        assert "ValueError" in text and cut and len(orjson.dumps(text)) <= R.MAX_REASON_BYTES
    assert beaver("wal", "verify", "--data-dir", data).returncode == 0


def test_the_issues_retention_change_after_kill_9_opens(
    tmp_path: Path,
    runs: list[RunProcess],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = str(tmp_path / "d")
    monkeypatch.setenv("BEAVER_COMPLETED_RETENTION", "2")
    run = start(runs, data, *HOSTILE_FLAGS, "--snapshot-interval", "0")  # A's ENQUEUEs stay in the log
    for n, batch in ((1, ["A"]), (4, ["B", "C", "D"])):
        assert enqueue(data, [{"id": j, "payload": {"n": 1}} for j in batch], tmp_path).returncode == 0
        wait_for(data, n)
    assert status(data)["dropped"] == 2  # A and B have left the window of 2
    again = enqueue(data, [{"id": "A", "payload": {"n": 1}}], tmp_path)
    assert again.returncode == 0 and "1 new" in again.stdout  # a new job: it left the window
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    monkeypatch.setenv("BEAVER_COMPLETED_RETENTION", "0")
    verify = beaver("wal", "verify", "--data-dir", data)
    assert verify.returncode == 0, verify.stdout
    run = start(runs, data, *HOSTILE_FLAGS)  # opens: replay follows the recorded window, not the config file
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=60) == 0
    dump = beaver("wal", "dump", "--json", "--data-dir", data)
    recs = map(orjson.loads, dump.stdout.splitlines())
    configs = [r["completed_retention"] for r in recs if r["type"] == "config"]
    assert configs == [2, 0]


def test_an_oversized_id_is_refused_before_the_data_dir_exists(tmp_path: Path) -> None:
    data = tmp_path / "q"
    out = enqueue(str(data), [{"id": "x" * 1_048_510, "payload": {}}], tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and len(out.stderr) < 400
    assert "max_record_bytes" in out.stderr and not data.exists()

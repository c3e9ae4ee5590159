"""Operating the queue with real processes: `beaver jobs` and `beaver job ID` against a running
`beaver run` (over its control socket) and after it stopped (from the files); `beaver enqueue` into a
mistyped data directory is refused and creates nothing; Ctrl-C (SIGINT to the process group, as a
terminal sends it) stops `beaver crash-sweep --points all` within seconds, printing what finished and
leaving no pool worker behind."""

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

from beaver_sim.demo import RunProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
# Generous for a loaded 2-core machine: the sweep stops in well under a second when it is quiet
# (the figure is in the report of issue 19). Without the interrupt path it ran on for ~40 s.
SIGINT_BOUND = 8.0


def beaver(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=120)


def wait_until(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def runs() -> Iterator[list[RunProcess]]:
    started: list[RunProcess] = []
    yield started
    for run in started:
        run.stop()


def test_jobs_and_job_while_running_and_after(tmp_path: Path, runs: list[RunProcess]) -> None:
    """A slow job stays in flight (a lease, from the running controller); jobs that fail on every
    attempt end dead with their reason; after SIGTERM the same answers come from the files."""
    (tmp_path / "c.yaml").write_text("handlers:\n  sleep: beaver_sim.examples.handlers:sleep\n")
    data_dir = str(tmp_path / "d")
    flags = ["--data-dir", data_dir, "--config", "c.yaml"]
    fast = ("--failure-rate", "1", "--max-retry", "2", "--work-min", "1ms", "--work-max", "5ms")
    run = RunProcess([*BEAVER, "run", *flags, "--metrics-port", "0", "--timeout", "60s", *fast])
    runs.append(run)
    run.wait_line(re.compile("^ready"), 60)
    jobs = [{"id": "slow", "payload": {"type": "sleep", "seconds": 30}}]
    jobs += [{"id": f"bad-{i}", "payload": {"type": "compute", "n": i}} for i in range(3)]
    (tmp_path / "jobs.json").write_bytes(orjson.dumps(jobs))
    assert beaver("enqueue", *flags, "--file", str(tmp_path / "jobs.json")).returncode == 0

    def dead() -> list[dict[str, Any]]:
        out = beaver("jobs", *flags, "--state", "dead", "--json")
        assert out.returncode == 0, out.stderr
        return orjson.loads(out.stdout)

    wait_until(lambda: len(dead()) == 3)
    assert [(r["id"], r["attempts"]) for r in dead()] == [(f"bad-{i}", 2) for i in range(3)]
    assert all(r["reason"] == "failed: SimulatedFailure: simulated failure" for r in dead())
    out = beaver("job", "slow", *flags, "--json")
    assert out.returncode == 0, out.stderr
    slow = orjson.loads(out.stdout)
    assert (slow["running"], slow["state"], slow["attempts"]) == (True, "in_flight", 1)
    assert slow["lease"]["attempt"] == 1 and slow["payload"] == {"type": "sleep", "seconds": 30}
    assert [a["outcome"] for a in slow["history"]] == [None]
    lines = beaver("jobs", *flags).stdout.splitlines()
    assert lines[0] == "slow in_flight attempts=1"
    assert lines[1] == 'bad-0 dead attempts=2 reason="failed: SimulatedFailure: simulated failure"'
    run.proc.send_signal(signal.SIGINT)  # twice: stop now, without waiting for the slow attempt
    run.wait_line(re.compile("^stopping"), 30)
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(timeout=60) == 0
    after = orjson.loads(beaver("job", "bad-1", *flags, "--json").stdout)
    assert (after["running"], after["state"], after["reason"]) == (False, "dead", dead()[1]["reason"])
    assert [a["outcome"] for a in after["history"]] == ["failed", "dead"] and after["history_complete"]
    missing = beaver("job", "nope", *flags)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == f"beaver job: no job nope in {data_dir}\n"


def test_enqueue_into_a_mistyped_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_bytes(orjson.dumps([{"id": "a", "payload": {}}]))
    typo = str(tmp_path / "typo")
    out = beaver("enqueue", "--data-dir", typo, "--file", str(tmp_path / "jobs.json"))
    assert out.returncode == 2 and out.stdout == ""
    assert (
        out.stderr.count("\n") == 1 and f"beaver enqueue: error: {typo}: no such data directory" in out.stderr
    )
    assert not os.path.exists(typo)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_ctrl_c_stops_a_crash_sweep_promptly_and_prints_what_finished(tmp_path: Path) -> None:
    argv = [*BEAVER, "crash-sweep", "--jobs", "200", "--points", "all", "--processes", "2", "--no-progress"]
    sweep = subprocess.Popen(  # SIGINT at its default, as a shell gives it: not what pytest inherited
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(lambda: children(sweep.pid), 60)  # the pool has started: points are running
        time.sleep(1.0)
        workers = children(sweep.pid)
        assert sweep.poll() is None
        t0 = time.monotonic()
        os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = sweep.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert sweep.returncode == 130, (out[-2000:], err)
    assert took < SIGINT_BOUND, f"took {took:.1f} s to stop"
    assert "Traceback" not in err, err
    line = out.splitlines()[0]
    assert line.startswith("interrupted after ") and " crash points done, " in line, out
    done, total = (int(x) for x in line.split(": ", 1)[1].split(" crash points")[0].split(" of "))
    assert 0 <= done < total
    assert "invariants ok at every one of them" in line
    wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10)

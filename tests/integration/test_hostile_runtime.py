"""Nothing a job, a client or a handler does stops `beaver run` (issue 17, the runtime's half), against
real processes: handlers that raise anything, exit, print megabytes, fork or hang in C; clients that
flood the socket, send garbage, too much or too deep. Each time: run stays up, healthy jobs complete,
acknowledged jobs are kept. Last, a hypothesis suite draws handler and client behaviours together
against one running controller (a bounded number of examples)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beaver_sim.core import records as R
from beaver_sim.core.types import Config, JobStatus
from beaver_sim.demo import RunProcess
from beaver_sim.runtime.server import MAX_REQUEST, request
from beaver_sim.runtime.service import read_state
from beaver_sim.storage import wal
from beaver_sim.storage.fs import RealFS
from tests import hostile_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
# `beaver run` under a lower RLIMIT_NOFILE (as `ulimit -n` would set it): python -c LIMIT ARGV...
LIMITED = (
    "import resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "from beaver_sim.cli import main; sys.exit(main(sys.argv[2:]))"
)
READY = re.compile(r"^ready")
METRICS = re.compile(r"^metrics: (\S+)")

HANDLERS = """
import os, sys, time


class NotAStr(Exception):
    def __str__(self):
        return 503


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str")

    def __repr__(self):
        raise SystemExit("no repr")


class Base(BaseException):
    pass


def notastr(p): raise NotAStr()
def unprintable(p): raise Unprintable()
def huge(p): raise ValueError("E" * 2_000_000)
def base(p): raise Base("base")
def sysexit(p): sys.exit(3)
def interrupt(p): raise KeyboardInterrupt
def surrogate(p): raise ValueError("\\ud800 lone")
def exits(p): os._exit(7)
def nonjson(p): return {1, 2, object()}
def quick(p): return p
def stuck(p): time.sleep(3600)
def spin(p):
    while True:
        time.sleep(0.01)


def loud(p):
    sys.stdout.write("x" * 4_000_000 + "\\n")
    sys.stdout.flush()


def mutate(p):
    p.pop("secret")


def forker(p):
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    with open(p["pids"], "a") as f:
        f.write(f"{pid}\\n")
"""
KINDS = [
    *("notastr", "unprintable", "huge", "base", "sysexit", "interrupt", "surrogate", "exits", "nonjson"),
    *("quick", "stuck", "spin", "loud", "mutate", "forker"),
]
IN_PROCESS_ONLY = {"exits"}  # under threads, that process is `beaver run` itself


def beaver(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=timeout)


def wait_until(check: Callable[[], Any], timeout: float, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Node:
    """A data directory, the handler module next to it, and the `beaver run`s started on it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = str(tmp / "d")
        (tmp / "hostile.py").write_text(HANDLERS)
        (tmp / "h.yaml").write_text("handlers:\n" + "".join(f"  {k}: hostile:{k}\n" for k in KINDS))
        self.runs: list[RunProcess] = []
        self.executor = "thread"

    def start(self, *flags: str, nofile: int | None = None) -> RunProcess:
        argv = ["run", "--data-dir", self.data_dir, "--config", "h.yaml", "--metrics-port", "0", *flags]
        full = [*BEAVER, *argv] if nofile is None else [sys.executable, "-c", LIMITED, str(nofile), *argv]
        run = RunProcess(full)
        self.runs.append(run)
        run.wait_line(READY, 60)
        return run

    def status(self) -> dict[str, Any]:
        for _ in range(100):
            answer = request(self.data_dir, {"op": "status"}, timeout=30)
            if answer.get("ok"):
                return answer["status"]
            time.sleep(0.05)  # busy: another client holds the socket
        raise AssertionError(f"status never answered: {answer}")

    def enqueue(self, jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """The controller's answer; a "busy" one (a flood still being dropped) is retried, as
        `beaver enqueue` does."""
        deadline = time.monotonic() + 30
        while True:
            answer = request(self.data_dir, {"op": "enqueue", "jobs": [list(j) for j in jobs]}, timeout=60)
            if not answer.get("retry") or time.monotonic() > deadline:
                return answer
            time.sleep(0.05)

    def jobs(self) -> dict[str, Any]:
        return read_state(Config(data_dir=self.data_dir)).state.jobs

    def reasons(self) -> dict[str, str]:
        found: dict[str, str] = {}

        def keep(rec: dict[str, Any], _lsn: int) -> None:
            if rec["type"] in (R.DEAD, R.FAIL):
                found[rec["job"]] = rec.get("reason") or rec.get("error")

        wal.scan(RealFS(), f"{self.data_dir}/wal", on_record=keep)
        return found

    def ended(self, ids: list[str]) -> bool:
        jobs = self.jobs()
        return all(i in jobs and jobs[i].status in (JobStatus.COMPLETED, JobStatus.DEAD) for i in ids)

    def stop(self, run: RunProcess) -> None:
        """SIGTERM: a clean stop, exit 0, and `wal verify` clean afterwards."""
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=60) == 0, run.lines[-5:]
        out = beaver("wal", "verify", "--data-dir", self.data_dir)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    for run in n.runs:
        run.stop()


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


# -- handlers (items 3, 4, 5, 12, 14) ---------------------------------------------------------------


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_poison_handlers_fail_their_attempts_and_the_healthy_jobs_after_them_complete(
    node: Node, executor: str
) -> None:
    run = node.start("--workers", "2", "--timeout", "1s", "--max-retry", "2", "--executor", executor)
    # the issue's case first: 4 jobs whose exception cannot be printed, then 5 healthy ones
    first = [(f"bad-{i}", {"type": "notastr"}) for i in range(4)] + [
        (f"ok-{i}", {"type": "quick"}) for i in range(5)
    ]
    assert node.enqueue(first)["ok"]
    kinds = [
        k
        for k in (
            "unprintable",
            "huge",
            "base",
            "sysexit",
            "interrupt",
            "surrogate",
            "exits",
            "loud",
            "nonjson",
        )
        if executor == "process" or k not in IN_PROCESS_ONLY
    ]
    assert node.enqueue(
        [(f"p-{k}", {"type": k}) for k in kinds] + [(f"ok2-{i}", {"type": "quick"}) for i in range(5)]
    )["ok"]
    every = [j for j, _ in first] + [f"p-{k}" for k in kinds] + ids("ok2", 5)
    wait_until(lambda: node.ended(every), 60, "every job to end")
    jobs = node.jobs()
    healthy = ids("ok", 5) + ids("ok2", 5) + ["p-loud"]  # p-nonjson's result is not JSON: a failure
    assert {j: jobs[j].status for j in healthy} == dict.fromkeys(healthy, JobStatus.COMPLETED)
    poison = [j for j in every if j not in healthy]
    assert {j: (jobs[j].status, jobs[j].attempt) for j in poison} == dict.fromkeys(
        poison, (JobStatus.DEAD, 2)
    )
    reasons = node.reasons()
    assert reasons["bad-0"] == "failed: NotAStr: <unprintable: NotAStr()>"
    assert reasons["p-unprintable"] == "failed: Unprintable: <unprintable>"
    assert reasons["p-huge"].endswith("[1999012 more characters]") and len(reasons["p-huge"]) < 1100
    assert reasons["p-sysexit"] == "failed: SystemExit: 3"
    assert reasons["p-interrupt"] == "failed: KeyboardInterrupt"
    assert reasons["p-surrogate"] == "failed: ValueError: \\ud800 lone"
    assert reasons["p-nonjson"].startswith("failed: result refused: ")  # kept results are JSON
    if executor == "process":
        assert reasons["p-exits"] == "failed: handler process died (exit code 7)"
    st_ = node.status()
    assert st_["stuck_workers"] == [] and st_["in_flight"] == 0
    node.stop(run)


def test_a_handler_that_mutates_its_payload_changes_nothing_stored(node: Node) -> None:
    run = node.start("--workers", "1", "--snapshot-interval", "50ms")
    batch = [("m", {"type": "mutate", "secret": "s3cret"})]
    assert node.enqueue(batch)["ok"]
    wait_until(lambda: node.ended(["m"]), 30, "the job to end")
    assert node.enqueue(batch) == {"ok": True, "enqueued": 0, "already_present": 1}
    node.stop(run)  # writes a snapshot
    assert node.jobs()["m"].payload == {"type": "mutate", "secret": "s3cret"}


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_handler_that_forks_leaves_no_child_holding_the_lock(node: Node, executor: str) -> None:
    pids = node.tmp / "children"
    run = node.start("--workers", "2", "--executor", executor)
    try:
        assert node.enqueue([("f", {"type": "forker", "pids": str(pids)})])["ok"]
        wait_until(lambda: node.ended(["f"]) and pids.exists(), 30, "the fork")
        child = int(pids.read_text().split()[0])
        lock = os.path.join(node.data_dir, "LOCK")

        def holds_lock() -> bool:  # the child lets go in its after-fork hook, as soon as it runs
            return lock in [os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")]

        wait_until(lambda: not holds_lock(), 10, "the child to let go of the lock")
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        t0 = time.monotonic()
        again = node.start("--workers", "2", "--executor", executor)
        assert time.monotonic() - t0 < 30 and not any("waiting" in line for line in again.lines)
        node.stop(again)
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_the_default_executor_keeps_healthy_jobs_flowing_past_handlers_stuck_in_c(node: Node) -> None:
    run = node.start("--workers", "4", "--timeout", "300ms")  # executor: thread, the default
    assert node.enqueue([(f"stuck-{i}", {"type": "stuck"}) for i in range(8)])["ok"]
    wait_until(
        lambda: sum(node.jobs()[j].attempt for j in ids("stuck", 8)) >= 12, 30, "two rounds of timeouts"
    )
    assert node.enqueue([(f"ok-{i}", {"type": "quick"}) for i in range(8)])["ok"]
    wait_until(lambda: node.ended(ids("stuck", 8) + ids("ok", 8)), 60, "every job to end")
    jobs = node.jobs()
    assert all(jobs[j].status is JobStatus.COMPLETED for j in ids("ok", 8))
    st_ = node.status()
    assert st_["running_without_slot"] == 24 and st_["spare_threads"] == 64  # 8 jobs x 3 attempts
    assert {a["job"] for a in st_["abandoned_attempts"]} == set(ids("stuck", 8))
    url = run.wait_line(METRICS, 1).group(1)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "queue_attempts_running_without_slot 24.0" in text and "queue_spare_threads 64.0" in text
    node.stop(run)
    assert any("24 abandoned attempt(s) still running" in line for line in run.lines)


# -- clients (items 6, 7, 8) --------------------------------------------------------------------------


def raw(data_dir: str, data: bytes, timeout: float = 30) -> dict[str, Any] | None:
    """A hostile client's request to the run serving `data_dir`; the answer, if any."""
    return hostile_client.raw(os.path.join(data_dir, "beaver.sock"), data, timeout)


def deep(levels: int) -> bytes:
    return b'{"op": "enqueue", "jobs": [["deep", ' + b'{"a": ' * levels + b"1" + b"}" * levels + b"]]}"


def test_a_payload_nested_300_deep_is_refused_in_one_line_and_run_serves_on(node: Node) -> None:
    run = node.start()
    answer = raw(node.data_dir, deep(300))
    assert answer is not None and answer["ok"] is False and "\n" not in answer["error"]
    assert "nested deeper than 131 levels" in answer["error"]
    assert node.enqueue([("after", {"type": "quick"})])["ok"]
    wait_until(lambda: node.ended(["after"]), 30, "the job after")
    assert "deep" not in node.jobs()
    node.stop(run)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_request_over_the_size_bound_is_refused_by_size_and_not_retried(node: Node) -> None:
    run = node.start()
    before = rss_mb(run.proc.pid)
    answer = raw(node.data_dir, b" " * (MAX_REQUEST * 4))
    assert answer == {"ok": False, "error": f"refused: the request is over {MAX_REQUEST} bytes"}
    assert rss_mb(run.proc.pid) - before < 2 * MAX_REQUEST / 2**20  # read up to the bound, no further
    pad = "x" * 900_000
    big = node.tmp / "big.json"
    big.write_bytes(orjson.dumps([{"id": f"b{i}", "payload": {"pad": pad}} for i in range(80)]))
    t0 = time.monotonic()
    out = beaver("enqueue", "--data-dir", node.data_dir, "--file", str(big))
    assert out.returncode == 2 and time.monotonic() - t0 < 20, out.stderr
    assert out.stderr.count("\n") == 1 and "over the 64 MiB" in out.stderr
    assert node.enqueue([("after", {"type": "quick"})])["ok"]
    wait_until(lambda: node.ended(["after"]), 30, "the job after")
    node.stop(run)


@pytest.mark.parametrize(("nofile", "connections"), [(1024, 1100), (64, 200)])
def test_idle_connections_beyond_the_descriptor_limit_do_not_stop_the_queue(
    node: Node, nofile: int, connections: int
) -> None:
    run = node.start("--workers", "2", nofile=nofile)
    idle = []
    try:
        for _ in range(connections):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(os.path.join(node.data_dir, "beaver.sock"))
            except OSError:
                s.close()  # the backlog is full while accepting backs off: the next one may get in
                continue
            idle.append(s)
        time.sleep(1.5)  # at least one accept back-off (1 s) has passed
        assert run.proc.poll() is None
        if nofile == 64:
            warnings = [line for line in run.lines if "cannot accept" in line]
            assert len(warnings) == 1, warnings  # once, however many times accept failed
    finally:
        for s in idle:
            s.close()
    assert node.enqueue([(f"ok-{i}", {"type": "quick"}) for i in range(5)])["ok"]
    wait_until(lambda: node.ended(ids("ok", 5)), 30, "the healthy jobs")
    assert not any("fatal" in line for line in run.lines)
    node.stop(run)


# -- the lock (item 13) -----------------------------------------------------------------------------


def test_a_restart_waits_for_50_offline_enqueue_clients(node: Node) -> None:
    files = []
    for c in range(50):
        path = node.tmp / f"c{c}.json"
        path.write_bytes(orjson.dumps([{"id": f"c{c}-{i}", "payload": {"type": "quick"}} for i in range(3)]))
        files.append(path)
    clients = [
        subprocess.Popen(
            [*BEAVER, "enqueue", "--create", "--data-dir", node.data_dir, "--file", str(p)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in files
    ]
    wait_until(lambda: os.path.exists(os.path.join(node.data_dir, "LOCK")), 60, "the first client")
    run = node.start()
    for c in clients:
        _, err = c.communicate(timeout=120)
        assert c.returncode == 0, err
    every = [f"c{c}-{i}" for c in range(50) for i in range(3)]
    wait_until(lambda: node.ended(every), 60, "every job")
    node.stop(run)


# -- a hypothesis suite: handler and client behaviours drawn together --------------------------------

HANDLER_KINDS = [k for k in KINDS if k not in ("mutate", "forker", "stuck")]


def half_sent(data_dir: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.path.join(data_dir, "beaver.sock"))
        s.sendall(b'{"op": "enqueue", "jobs": [["half", {')  # and hangs up


def flood(data_dir: str) -> None:
    socks = []
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(os.path.join(data_dir, "beaver.sock"))
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()


def garbage(data: bytes) -> Callable[[str], None]:
    def send(data_dir: str) -> None:
        with contextlib.suppress(BlockingIOError):  # the backlog is full of a flood: so be it
            raw(data_dir, data)

    return send


CLIENTS = st.one_of(
    st.sampled_from([half_sent, flood, garbage(deep(1000)), garbage(deep(260)), garbage(b'{"op": "x"}')]),
    st.binary(max_size=2000).map(garbage),
    st.sampled_from(
        [b'{"op": "enqueue", "jobs": [[1, 2]]}', b'{"op": "enqueue", "jobs": {}}', b"[" * 5000]
    ).map(garbage),
)


@pytest.fixture(scope="module", params=["thread", "process"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Node, RunProcess, list[str]]]:
    """One `beaver run` per executor for every drawn example; at the end it stops cleanly and has
    kept every acknowledged job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAVER_")}
    tmp = tmp_path_factory.mktemp("hostile")
    cwd = os.getcwd()
    os.chdir(tmp)
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    n = Node(tmp)
    flags = ("--workers", "3", "--timeout", "500ms", "--max-retry", "2", "--snapshot-interval", "100ms")
    n.executor = request.param
    run = n.start(*flags, "--executor", n.executor)
    acknowledged: list[str] = []
    try:
        yield n, run, acknowledged
        assert run.proc.poll() is None
        n.stop(run)
        jobs = n.jobs()
        assert all(j in jobs for j in acknowledged)  # every acknowledged job kept, through a snapshot
    finally:
        run.stop()
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(old)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    handlers=st.lists(st.sampled_from(HANDLER_KINDS), min_size=1, max_size=5),
    clients=st.lists(CLIENTS, min_size=1, max_size=3),
)
def test_drawn_handlers_and_clients_never_stop_run(
    shared: tuple[Node, RunProcess, list[str]], handlers: list[str], clients: list[Callable[[str], None]]
) -> None:
    node, run, acknowledged = shared
    if node.executor == "thread":  # under threads, a handler's os._exit is `beaver run`'s
        handlers = [k for k in handlers if k not in IN_PROCESS_ONLY]
    prefix = f"x{time.monotonic_ns()}"
    batch = [(f"{prefix}-{i}-{k}", {"type": k}) for i, k in enumerate(handlers)]
    batch += [(f"{prefix}-ok-{i}", {"type": "quick"}) for i in range(3)]
    threads = [threading.Thread(target=c, args=(node.data_dir,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    answer = node.enqueue(batch)
    assert answer["ok"], answer
    acknowledged.extend(j for j, _ in batch)
    for t in threads:
        t.join(30)
    wait_until(lambda: node.ended([j for j, _ in batch]), 60, "the batch to end")
    jobs = node.jobs()
    assert all(jobs[f"{prefix}-ok-{i}"].status is JobStatus.COMPLETED for i in range(3))
    assert run.proc.poll() is None and not any("fatal" in line for line in run.lines)

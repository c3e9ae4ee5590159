"""The real-world pieces in one process: RealClock on asyncio, the worker pool (handlers, seeded
simulated work, results on the loop thread), the data-directory lock (held by a real subprocess),
and the Service wired end to end over its control socket."""

from __future__ import annotations

import asyncio
import errno
import operator
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from beaver_sim.core.controller import Enqueued
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.runtime.clock import LATENESS_BUCKETS, RealClock, TimerLateness
from beaver_sim.runtime.lock import DataDirLock, DataDirLocked
from beaver_sim.runtime.server import ControlUnavailable, request
from beaver_sim.runtime.service import Service, enqueue, read_state, status_of
from beaver_sim.runtime.workers import PoolWorkers, takes_ctx
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.workers import SimWorkers

Result = tuple[str, bool, "str | None"]


def poll(check: Any, timeout: float = 20.0) -> None:
    """Wait until `check()` is true, failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- RealClock -----------------------------------------------------------------------------------


def test_real_clock_runs_callbacks_in_time_order_and_cancels() -> None:
    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        clock = RealClock(loop)
        seen: list[str] = []
        t0 = clock.now()
        clock.call_at(t0 + 0.03, seen.append, "at")
        clock.call_later(0.01, seen.append, "later")
        clock.call_later(0, seen.append, "soon")
        clock.cancel(clock.call_later(0.02, seen.append, "cancelled"))
        clock.cancel(clock.call_later(0, seen.append, "cancelled too"))
        await asyncio.sleep(0.06)
        assert clock.now() >= t0 + 0.03
        return seen

    assert asyncio.run(go()) == ["soon", "later", "at"]


def test_equal_deadlines_fire_in_the_order_set_on_both_clocks() -> None:
    """asyncio's call_at compares the time only; both clocks break ties by insertion order, with
    cancelled entries and callbacks that set more timers in between."""

    def script(clock: Any, seen: list[Any]) -> None:
        t = clock.now() + 0.02
        handles = [clock.call_at(t, seen.append, i) for i in range(200)]
        for h in handles[::7]:
            clock.cancel(h)
        clock.call_at(t, lambda: clock.call_at(t, seen.append, "set while firing"))
        clock.call_at(t + 0.01, seen.append, "later")
        clock.call_at(t, seen.append, "last of t")

    virtual: list[Any] = []
    vclock = VirtualClock()
    script(vclock, virtual)
    vclock.run()

    async def go() -> list[Any]:
        seen: list[Any] = []
        clock = RealClock(asyncio.get_running_loop())
        script(clock, seen)
        await asyncio.sleep(0.08)
        assert clock.lateness.count == 200 - len(range(0, 200, 7)) + 4 and clock.lateness.p99() >= 0
        return seen

    real = asyncio.run(go())
    assert real == virtual
    assert virtual[:3] == [1, 2, 3] and virtual[-3:] == ["last of t", "set while firing", "later"]


def test_an_exception_in_a_timer_reaches_the_loop_and_the_next_timers_still_run() -> None:
    async def go() -> tuple[list[str], list[BaseException]]:
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        clock, seen = RealClock(loop), []
        t = clock.now() + 0.01
        clock.call_at(t, seen.append, "before")
        clock.call_at(t, operator.truediv, 1, 0)
        clock.call_at(t, seen.append, "after")
        await asyncio.sleep(0.05)
        return seen, errors

    seen, errors = asyncio.run(go())
    assert seen == ["before", "after"] and [type(e) for e in errors] == [ZeroDivisionError]


def test_timer_lateness_p99_and_buckets() -> None:
    lateness = TimerLateness()
    assert lateness.p99() == 0.0
    for i in range(1, 201):
        lateness.observe(i / 1000)
    assert lateness.p99() == 0.198  # nearest rank: the 198th of 200
    assert lateness.count == 200 and sum(lateness.buckets) == 200
    assert sum(lateness.buckets[: LATENESS_BUCKETS.index(0.1) + 1]) == 100  # 1..100 ms: at most 0.1 s


# -- PoolWorkers ---------------------------------------------------------------------------------


def run_attempts(
    config: Config, payloads: list[dict[str, Any]], handlers: dict[str, Any] | None = None
) -> list[Result]:
    """Submit one attempt per payload on a real loop; results in job order."""

    async def go() -> list[Result]:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        workers = PoolWorkers(loop, config, handlers)
        results: dict[str, Result] = {}
        finished = loop.create_future()

        def done(job_id: str, attempt: int, ok: bool, error: str | None) -> None:
            assert threading.get_ident() == loop_thread and attempt == 1
            results[job_id] = (job_id, ok, error)
            if len(results) == len(payloads):
                finished.set_result(None)

        for i, payload in enumerate(payloads):
            workers.submit(f"j{i:03d}", 1, 0, payload, done)
        await asyncio.wait_for(finished, 60)
        assert workers.close(timeout=10) == 0
        return [results[k] for k in sorted(results)]

    return asyncio.run(go())


FAST = Config(worker_count=4, work_min=0.0, work_max=0.001)


def test_results_lateness_counts_the_late_results_a_timeout_cuts_short() -> None:
    """How late a simulated-work result comes against dispatch + its drawn duration; one still
    missing at its deadline counts as at least that late, one that came in time as it came."""

    async def go() -> TimerLateness:
        loop = asyncio.get_running_loop()
        lateness = TimerLateness()
        workers = PoolWorkers(loop, Config(worker_count=2, work_min=0.05, work_max=0.05, failure_rate=0))
        dispatched = {"prompt": loop.time(), "late": loop.time() - 1.0}  # "late" is a second behind
        workers.watch(lateness, dispatched.get)
        arrived = loop.create_future()
        workers.submit("prompt", 1, 0, {}, lambda *result: arrived.set_result(result))
        workers.submit("late", 1, 1, {}, lambda *result: None)
        assert (await asyncio.wait_for(arrived, 10))[2] is True
        workers.abandon("late", 1, 1)  # its deadline passed before its result came
        workers.close(timeout=1)
        return lateness

    lateness = asyncio.run(go())
    assert lateness.count == 2
    assert 0 <= min(lateness.recent) < 0.5 and lateness.max() >= 0.95


def test_noop_and_user_handlers_by_payload_type() -> None:
    config = Config(worker_count=2, handlers={"dump": "json:dumps", "root": "math:sqrt"})
    got = run_attempts(config, [{"type": "noop"}, {"type": "dump"}, {"type": "root"}])
    assert got[0][1:] == (True, None)
    assert got[1][1:] == (True, '{"type": "dump"}')  # what the handler returned: the job's result
    assert got[2][1] is False and got[2][2] is not None and got[2][2].startswith("TypeError: ")


def test_simulated_work_follows_failure_rate() -> None:
    always = run_attempts(Config(worker_count=2, failure_rate=1.0, work_min=0, work_max=0), [{}] * 5)
    assert {r[1:] for r in always} == {(False, "SimulatedFailure: simulated failure")}
    never = run_attempts(
        Config(worker_count=2, failure_rate=0.0, work_min=0, work_max=0), [{"type": "compute"}] * 5
    )
    assert all(r[1] for r in never)


def test_simulated_work_draws_like_the_simulator_for_the_same_seed() -> None:
    config = Config(worker_count=4, seed=11, failure_rate=0.5, work_min=0.0, work_max=0.002)
    real = [ok for _, ok, _ in run_attempts(config, [{"type": "compute"}] * 40)]
    clock = VirtualClock()
    sim = SimWorkers(clock, config.seed, config.failure_rate, config.work_min, config.work_max, record=True)
    for i in range(40):
        sim.submit(f"j{i:03d}", 1, 0, {}, lambda *a: None)
    assert real == [a.ok for a in sim.attempts]
    assert 5 < sum(real) < 35


def test_process_executor_runs_handlers_by_name() -> None:
    config = Config(worker_count=1, executor="process", handlers={"dump": "json:dumps"})
    got = run_attempts(config, [{"type": "noop"}, {"type": "dump"}, {"type": "compute"}])
    assert [ok for _, ok, _ in got[:2]] == [True, True]


def test_a_handler_that_cannot_be_loaded_is_one_clear_error() -> None:
    with pytest.raises(BeaverError, match="handler 'no_such_module_zz:f' cannot be loaded"):
        run_attempts(Config(handlers={"x": "no_such_module_zz:f"}), [{}])


# -- DataDirLock ---------------------------------------------------------------------------------

HOLDER = """
import sys
from beaver_sim.runtime.lock import DataDirLock
DataDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_held_by_another_process_is_refused_naming_its_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLocked) as err:
            DataDirLock(str(tmp_path)).acquire()
        assert err.value.pid == holder.pid and f"PID {holder.pid}" in str(err.value)
        holder.send_signal(signal.SIGKILL)  # the kernel drops the flock with the process
        holder.wait()
        lock = DataDirLock(str(tmp_path))
        poll(lambda: _try(lock))
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
        lock.release()
        assert (tmp_path / "LOCK").read_text() == ""
    finally:
        holder.kill()
        holder.wait()


def _try(lock: DataDirLock) -> bool:
    try:
        lock.acquire()
    except DataDirLocked:
        return False
    return True


def test_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with DataDirLock(str(tmp_path)), pytest.raises(DataDirLocked):
        DataDirLock(str(tmp_path)).acquire()  # flock: per open file, unlike lockf


# -- Service -------------------------------------------------------------------------------------


def service_config(tmp_path: Path, **kw: Any) -> Config:
    base = {
        "data_dir": str(tmp_path / "d"),
        "worker_count": 4,
        "task_timeout": 2.0,
        "work_min": 0.0,
        "work_max": 0.01,
        "failure_rate": 0.0,
        "metrics_port": 0,
        "snapshot_interval": 0.05,
    }
    return Config(**{**base, **kw})


def jobs(n: int, start: int = 0, kind: str = "compute") -> list[tuple[str, dict[str, Any]]]:
    return [(f"job-{i:04d}", {"type": kind, "n": i}) for i in range(start, start + n)]


def test_service_serves_enqueue_and_status_over_its_socket(tmp_path: Path) -> None:
    config = service_config(tmp_path)

    async def go() -> None:
        service = Service(config)
        await service.start()
        runner = asyncio.create_task(service.run())
        n, how = await asyncio.to_thread(enqueue, config, jobs(50))
        assert (n.new, n.already_present, how) == (50, 0, "via the running controller")
        answer = await asyncio.to_thread(
            request, config.data_dir, {"op": "enqueue", "jobs": [["job-0001", {}]]}
        )
        assert (
            answer["ok"] is False
            and "job id 'job-0001' is already enqueued with a different" in answer["error"]
        )
        again = await asyncio.to_thread(request, config.data_dir, {"op": "enqueue", "jobs": jobs(51)})
        assert again == {"ok": True, "enqueued": 1, "already_present": 50}
        while (await asyncio.to_thread(status_of, config))["completed"] < 51:
            await asyncio.sleep(0.01)
        st = await asyncio.to_thread(status_of, config)
        assert st["running"] is True and st["pid"] == os.getpid() and st["jobs"] == 51
        # every result of the simulated work (51) and the snapshot timers: how late each one came
        assert service.lateness.count > 51 and 0 <= st["timer_lateness_p99"] <= st["timer_lateness_max"] < 5
        text = service.metrics.text()
        assert f"queue_timer_lateness_seconds_count {float(service.lateness.count)}" in text
        assert "queue_timer_lateness_p99_seconds " in text
        service.request_stop()
        await runner
        await service.close()

    asyncio.run(go())
    assert not os.path.exists(os.path.join(config.data_dir, "beaver.sock"))
    with pytest.raises(ControlUnavailable):
        request(config.data_dir, {"op": "status"})
    st = status_of(config)  # from the files now
    assert (st["running"], st["completed"], st["pending"], st["in_flight"]) == (False, 51, 0, 0)
    DataDirLock(config.data_dir).acquire()  # released


def test_enqueue_without_a_controller_writes_durably_then_run_drains(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    done, how = enqueue(config, jobs(30))
    assert (done.new, how) == (30, "written directly: no controller running")
    found = read_state(config)
    assert found.state.stats()["pending"] == 30 and found.scan.replayed == 30
    assert enqueue(config, jobs(5))[0] == Enqueued(0, 5)  # a retry: already present
    with pytest.raises(BeaverError, match="job id 'job-0000' is already enqueued with a different payload"):
        enqueue(config, jobs(5, kind="email"))

    async def go() -> None:
        service = Service(config, serve_metrics=False)
        await service.start()
        await service.run(exit_when_idle=True)
        await service.close()

    asyncio.run(go())
    assert read_state(config).state.stats()["completed"] == 30


def test_clean_stop_lets_running_attempts_finish(tmp_path: Path) -> None:
    config = service_config(tmp_path, work_min=0.2, work_max=0.3, snapshot_interval=0)

    async def go() -> None:
        service = Service(config, serve_metrics=False, control_socket=False)
        await service.start()
        service.controller.enqueue(jobs(8))
        while len(service.controller.state.leases) < 4:
            await asyncio.sleep(0.005)
        service.request_stop()
        await service.close()

    asyncio.run(go())
    q = read_state(config).state
    assert q.counts[JobStatus.COMPLETED] == 4 and q.counts[JobStatus.PENDING] == 4
    assert not q.leases and all(q.jobs[f"job-{i:04d}"].attempt <= 1 for i in range(8))


class FailingSync:
    """A WAL segment whose fdatasync fails, as a dying disk's would (EIO)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def sync(self) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def close(self) -> None:
        self.inner.close()


def test_an_fsync_error_is_fatal_and_nothing_is_acknowledged(tmp_path: Path) -> None:
    config = service_config(tmp_path)

    async def go() -> tuple[Service, dict[str, Any]]:
        service = Service(config, serve_metrics=False)
        await service.start()
        runner = asyncio.create_task(service.run())
        wal = service.controller.storage.wal
        wal._file = FailingSync(wal._file)
        answer = await asyncio.to_thread(request, config.data_dir, {"op": "enqueue", "jobs": [["a", {}]]})
        await runner  # the service stopped by itself
        await service.close()
        return service, answer

    service, answer = asyncio.run(go())
    assert answer["ok"] is False and "Input/output error" in answer["error"]
    assert service.fatal is not None and "WALFailed" in service.fatal
    DataDirLock(config.data_dir).acquire()  # released even so


def test_a_controller_that_dies_mid_request_is_a_lost_connection_not_a_silent_success(tmp_path: Path) -> None:
    """A BrokenPipeError from the socket used to reach main's `beaver wal dump | head` handler,
    which exits 0 quietly: an enqueue that was never acknowledged looked durable."""
    from beaver_sim.runtime.server import ControlLost

    data = tmp_path / "d"
    data.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data / "beaver.sock"))
    listener.listen()

    def hang_up() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # reset, as a process killed with -9 leaves it

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    big = {"op": "enqueue", "jobs": [[f"j{i}", {"pad": "x" * 1000}] for i in range(5000)]}
    for req in (big, {"op": "status"}):
        with pytest.raises(ControlLost):
            request(str(data), req, timeout=10)
    t.join(5)
    listener.close()


def with_ctx(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A handler taking (payload, ctx): returns its attempt's identity as the result."""
    return {"job": ctx.job_id, "attempt": ctx.attempt, "n": payload["n"]}


def payload_only(payload: dict[str, Any], retries: int = 3) -> int:
    return retries


def opaque(payload: dict[str, Any]) -> object:
    return object()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_handler_may_take_ctx_and_its_return_value_is_the_result(executor: str) -> None:
    specs = {"ctx": f"{__name__}:with_ctx", "one": f"{__name__}:payload_only", "bad": f"{__name__}:opaque"}
    config = Config(worker_count=1, executor=executor, handlers=specs)
    got = run_attempts(config, [{"type": "ctx", "n": 5}, {"type": "one"}, {"type": "bad"}])
    assert got[0] == ("j000", True, {"job": "j000", "attempt": 1, "n": 5})
    assert got[1] == ("j001", True, 3)  # a second parameter with a default is not ctx
    if executor == "process":  # a result that is not JSON fails in the worker process
        assert got[2][1] is False and got[2][2].startswith("result refused: result: value: a object")
    else:  # threads hand the object over: the controller refuses it (test_operate)
        assert got[2][1] is True and type(got[2][2]) is object


def test_takes_ctx_decides_by_signature() -> None:
    assert takes_ctx(with_ctx) and takes_ctx(lambda p, ctx=None: p) and not takes_ctx(payload_only)
    assert not takes_ctx(len) and not takes_ctx(lambda p: p) and not takes_ctx(lambda *a: a)


def test_an_accept_retry_after_the_socket_closed_is_not_a_failure(tmp_path: Path) -> None:
    """Out of descriptors, asyncio stops accepting and re-arms the control socket 1 s later; if
    stopping closed that socket meanwhile, the re-arming raises ValueError (fd -1) into the loop's
    error handler: not a failure of the queue (it made `beaver run` exit 2, now and then)."""
    import resource

    config = service_config(tmp_path, snapshot_interval=600.0)
    warnings: list[str] = []

    async def go() -> Service:
        service = Service(config, serve_metrics=False)
        await service.start()
        service.warn = lambda kind, line: warnings.append(line)
        runner = asyncio.create_task(service.run())
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lowest = os.dup(0)  # the lowest free descriptor: the one accept() would take
        os.close(lowest)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
        try:
            client.connect(os.path.join(config.data_dir, "beaver.sock"))
            deadline = time.monotonic() + 10
            while not warnings and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the loop's accept(): EMFILE, retry armed for 1 s later
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.close()
        assert warnings and "cannot accept" in warnings[0]
        assert service.control is not None
        service.control.stop_accepting()  # what stopping does first, before the retry comes
        await asyncio.sleep(1.5)
        assert service.fatal is None
        service.request_stop()
        await runner
        await service.close()
        return service

    assert asyncio.run(go()).fatal is None

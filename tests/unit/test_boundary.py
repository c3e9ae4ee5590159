"""The runtime's boundary, in process: a handler's failure of any kind is a bounded description and
never costs a worker; descriptors a forked child must not keep; the control socket refusing by size,
by depth and by count; accept errors and a short-lived lock holder that do not stop `beaver run`.
The same behaviours against real processes: tests/integration/test_hostile_runtime.py."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beaver_sim.core.types import Config
from beaver_sim.runtime import server
from beaver_sim.runtime import workers as workers_module
from beaver_sim.runtime.jobs import find_job, list_jobs
from beaver_sim.runtime.lock import DataDirLock, DataDirLocked
from beaver_sim.runtime.server import RequestTooLarge, request, too_deep
from beaver_sim.runtime.service import Service, status_of
from beaver_sim.runtime.workers import MAX_ERROR_CHARS, PoolWorkers, describe_exception
from tests.hostile_client import raw

# -- describe_exception ----------------------------------------------------------------------------


class NotAStr(Exception):
    def __str__(self) -> Any:
        return 503


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise SystemExit("no repr either")


class SneakyStr(str):
    def __getitem__(self, key: Any) -> str:
        raise RuntimeError("no slicing")


class ReturnsSneaky(Exception):
    def __str__(self) -> str:
        return SneakyStr("sneaky")


class Base(BaseException):
    pass


MARKER = "more characters]"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("plain"), "ValueError: plain"),
        (NotAStr(), "NotAStr: <unprintable: NotAStr()>"),
        (Unprintable(), "Unprintable: <unprintable>"),
        (ReturnsSneaky(), "ReturnsSneaky: sneaky"),
        (Base("b"), "Base: b"),
        (SystemExit(3), "SystemExit: 3"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (ValueError("\ud800 lone"), "ValueError: \\ud800 lone"),
    ],
)
def test_describe_exception_never_raises(exc: BaseException, expected: str) -> None:
    assert describe_exception(exc) == expected


def test_a_huge_message_is_cut_with_a_marker() -> None:
    text = describe_exception(ValueError("E" * 2_000_000))
    assert len(text) < MAX_ERROR_CHARS + 40 and text.endswith("[1999012 more characters]")


@given(st.text(), st.integers(0, 3))
def test_every_description_is_bounded_and_fits_a_json_record(message: str, repeat: int) -> None:
    text = describe_exception(RuntimeError(message * (repeat * 500 + 1)))
    assert len(text) <= MAX_ERROR_CHARS + len(f"... [{10**9} {MARKER}")
    assert orjson.loads(orjson.dumps({"error": text})) == {"error": text}


# -- a handler's failure, whatever it is, frees its thread -----------------------------------------


def raiser(exc: BaseException) -> Any:
    def handler(payload: dict[str, Any]) -> None:
        raise exc

    return handler


POISON = {
    "notastr": raiser(NotAStr()),
    "unprintable": raiser(Unprintable()),
    "huge": raiser(ValueError("E" * 2_000_000)),
    "base": raiser(Base("b")),
    "exit": raiser(SystemExit(3)),
    "interrupt": raiser(KeyboardInterrupt()),
    "nonjson": lambda p: {1, 2, object()},
}


def test_one_thread_survives_every_kind_of_failure_and_runs_the_next_job() -> None:
    async def go() -> list[tuple[str, bool, str | None]]:
        loop = asyncio.get_running_loop()
        workers = PoolWorkers(loop, Config(worker_count=1), {**POISON, "ok": lambda p: None})
        results: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        seen = []
        try:
            for kind in [*POISON, "ok"]:  # one at a time on the one thread
                workers.submit(kind, 1, 0, {"type": kind}, lambda *a: results.put_nowait(a))
                job, _attempt, ok, error = await asyncio.wait_for(results.get(), 10)
                seen.append((job, ok, error))
            assert len(workers.pool.running) == 0 and len(workers.pool.idle) == 1  # type: ignore[union-attr]
        finally:
            workers.close(timeout=0)
        return seen

    seen = asyncio.run(go())
    assert [(job, ok) for job, ok, _ in seen] == [*((k, k == "nonjson") for k in POISON), ("ok", True)]
    errors = {job: error for job, _, error in seen}
    assert errors["notastr"] == "NotAStr: <unprintable: NotAStr()>"
    assert errors["exit"] == "SystemExit: 3" and errors["interrupt"] == "KeyboardInterrupt"
    assert errors["huge"] is not None and len(errors["huge"]) < MAX_ERROR_CHARS + 40


# -- forked children --------------------------------------------------------------------------------


def test_a_forked_child_does_not_keep_the_data_dir_locked(tmp_path: Path) -> None:
    lock = DataDirLock(str(tmp_path), role="run")
    lock.acquire()
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: sits on everything it inherited until told to go
        os.close(w)
        os.write(ready_w, b"!")
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    try:
        assert os.readlink(f"/proc/{pid}/fd/{lock.fd}") == os.devnull
        lock.release()  # the parent's was the last reference: unlocked though the child lives
        again = DataDirLock(str(tmp_path))
        again.acquire()
        again.release()
    finally:
        os.close(w)
        os.waitpid(pid, 0)


# -- the control socket ---------------------------------------------------------------------------


def test_depth_is_measured_without_recursion() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert too_deep(deep, 1000) and not too_deep([[{"a": [1]}]], 4) and too_deep([[{"a": [1]}]], 3)
    assert not too_deep(7, 0)


def test_a_request_over_the_size_bound_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    with pytest.raises(RequestTooLarge, match="over the 64 MiB"):
        request(str(tmp_path), {"op": "enqueue", "jobs": [["a", {"pad": "x" * (65 << 20)}]]})


def config(tmp_path: Path) -> Config:
    return Config(data_dir=str(tmp_path / "d"), metrics_port=0, work_min=0.0, work_max=0.01, failure_rate=0.0)


def test_the_socket_refuses_by_size_by_depth_and_by_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_REQUEST", 1 << 20)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 2)
    cfg = config(tmp_path)
    sock = os.path.join(cfg.data_dir, "beaver.sock")
    lines: list[str] = []

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        try:
            big = await asyncio.to_thread(raw, sock, b" " * (8 << 20))
            assert big == {"ok": False, "error": f"refused: the request is over {1 << 20} bytes"}
            nested = b'{"op": "enqueue", "jobs": [["deep", ' + b'{"a": ' * 300 + b"1" + b"}" * 300 + b"]]}"
            answer = await asyncio.to_thread(raw, sock, nested)
            assert answer["ok"] is False and "nested deeper than 131 levels" in answer["error"]
            idle = []
            for _ in range(3):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                idle.append(s)
            await asyncio.sleep(0.2)  # the server has taken all three; the third is over the cap
            busy = await asyncio.to_thread(raw, sock, b'{"op": "status"}')
            assert busy["retry"] is True and busy["error"].startswith("busy")
            for s in idle:
                s.close()
            await asyncio.sleep(0.2)
            ok = await asyncio.to_thread(raw, sock, b'{"op": "status"}')
            assert ok["ok"] is True
            assert service.fatal is None
        finally:
            service.request_stop()
            await service.close()

    asyncio.run(go())


# a client of another process: its answer's first bytes, or what it raised
OTHER_PEER = """
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b'{"op": "status"}')
    s.shutdown(socket.SHUT_WR)
    print(s.recv(12).decode())
"""


def test_one_process_gets_its_share_of_the_connections_and_the_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, the shares made small: this process (one peer, by SO_PEERCRED) holds 2 idle
    connections and is refused busy beyond, and a second request of it that would take more than
    its share of the buffer; another process is served meanwhile. Closed, nothing is left counted."""
    monkeypatch.setattr(server, "PEER_CONNECTIONS", 2)
    monkeypatch.setattr(server, "MAX_REQUEST", 1 << 20)
    monkeypatch.setattr(server, "PEER_BUFFER", 1 << 20)
    cfg = config(tmp_path)
    sock = os.path.join(cfg.data_dir, "beaver.sock")
    me = os.getpid()

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        control = service.control
        assert control is not None
        try:
            idle = []
            for _ in range(2):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                idle.append(s)
            while control.admitted < 2:
                await asyncio.sleep(0.01)
            busy = await asyncio.to_thread(raw, sock, b'{"op": "status"}')
            assert busy == {
                "ok": False,
                "retry": True,
                "error": f"busy: 2 requests open from this process (pid {me})",
            }
            other = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", OTHER_PEER, sock],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert other.stdout == '{"ok":true,"\n', other.stderr
            while len(control.peers) > 1:  # the other's answer is read before its request ends here
                await asyncio.sleep(0.01)
            assert list(control.peers) == [me] and control.admitted == 2
            idle.pop().close()
            # a request under way: 600 KB of this peer's 1 MiB
            await asyncio.to_thread(idle[0].sendall, b" " * (600 << 10))
            while control.peers[me].buffered < 600 << 10:
                await asyncio.sleep(0.01)
            over = await asyncio.to_thread(raw, sock, b" " * (600 << 10))
            assert over == {
                "ok": False,
                "retry": True,
                "error": f"busy: this process (pid {me}) is sending over {1 << 20} bytes at once",
            }
            idle[0].close()
            while control.admitted:
                await asyncio.sleep(0.01)
            assert control.peers == {} and control.buffered == 0
            assert (await asyncio.to_thread(raw, sock, b'{"op": "status"}'))["ok"] is True
            assert lines == [
                f"warning: process {me} holds 2 control requests open: more from it are answered busy "
                "(the other clients are served)"
            ]
        finally:
            service.request_stop()
            await service.close()

    lines: list[str] = []
    asyncio.run(go())


def test_status_job_and_jobs_ask_a_busy_controller_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`beaver status`, `job` and `jobs` (server.ask) are answered once a slot frees: this process
    holds its whole share (one connection) for 0.5 s, each asks meanwhile, is told busy, asks again."""
    monkeypatch.setattr(server, "PEER_CONNECTIONS", 1)
    cfg = config(tmp_path)
    sock = os.path.join(cfg.data_dir, "beaver.sock")

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        control = service.control
        assert control is not None
        answers: list[Any] = []
        try:
            for ask in (
                partial(status_of, cfg),
                partial(find_job, cfg, "none"),
                partial(list_jobs, cfg, None, None),
            ):
                holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                holder.connect(sock)
                while not control.admitted:
                    await asyncio.sleep(0.01)
                asking = asyncio.create_task(asyncio.to_thread(ask))
                await asyncio.sleep(0.5)
                assert not asking.done()  # told busy, asking again
                holder.close()
                answers.append(await asyncio.wait_for(asking, 10))
            assert answers[0]["running"] is True and answers[1:] == [None, []]  # no such job, no jobs
            assert len(lines) == 1 and lines[0].startswith(f"warning: process {os.getpid()} holds 1 control")
        finally:
            service.request_stop()
            await service.close()

    lines: list[str] = []
    asyncio.run(go())


def test_a_client_that_takes_none_of_its_answer_is_dropped_and_frees_its_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with the bounds made small (the real-process test: test_silent_clients.py): a
    listing client that reads nothing holds the one listing slot until WRITE_TIMEOUT, another
    listing is answered busy meanwhile and a status at once; then the silent one is dropped (its
    answer cut short, a warning logged) and a listing is answered whole."""
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 2.0)
    monkeypatch.setattr(server, "MAX_STREAMS", 1)
    cfg = config(tmp_path)
    sock = os.path.join(cfg.data_dir, "beaver.sock")
    listing = b'{"op": "jobs", "state": null, "limit": null}'
    lines: list[str] = []

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        assert service.control is not None
        try:
            jobs = [[f"w{i:05d}", {"n": i}, {"not_before": 4102444800}] for i in range(20_000)]
            enq = await asyncio.to_thread(request, cfg.data_dir, {"op": "enqueue", "jobs": jobs})
            assert enq["ok"] is True
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            silent.connect(sock)
            silent.sendall(listing)
            silent.shutdown(socket.SHUT_WR)
            while service.control.streams == 0:
                await asyncio.sleep(0.01)
            busy = await asyncio.to_thread(raw, sock, listing)
            assert busy == {"ok": False, "retry": True, "error": "busy: 1 listings open at once"}
            assert (await asyncio.to_thread(raw, sock, b'{"op": "status"}'))["ok"] is True
            while service.control.streams or service.control.tasks:
                await asyncio.sleep(0.05)  # dropped after 2 s of taking nothing
            silent.settimeout(10)
            body = b"".join(iter(lambda: silent.recv(1 << 16), b""))
            silent.close()
            assert body.startswith(b'{"ok":true,"jobs":[') and not body.endswith(b"]}")
            whole = await asyncio.to_thread(raw, sock, listing)
            assert whole is not None and len(whole["jobs"]) == 20_000
            assert lines.count("warning: a control client stopped taking its answer for 2 s: dropped") == 1
        finally:
            service.request_stop()
            await service.close()

    asyncio.run(go())


# a listing client of another process: how many jobs its answer lists, or the answer if not ok
OTHER_LISTING = """
import socket, sys, orjson
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b'{"op": "jobs", "state": null, "limit": null}')
    s.shutdown(socket.SHUT_WR)
    answer = orjson.loads(b"".join(iter(lambda: s.recv(1 << 16), b"")))
    print(len(answer["jobs"]) if answer["ok"] else answer)
"""


def test_one_process_gets_its_share_of_the_listings(tmp_path: Path) -> None:
    """The real shares (PEER_STREAMS of MAX_STREAMS): this process holds PEER_STREAMS listings it
    never reads and is refused busy, naming its pid, for one more, while another process's listing
    is answered whole. Before the share, one process could hold all MAX_STREAMS. Closed, nothing is
    left counted."""
    assert server.PEER_STREAMS < server.MAX_STREAMS
    cfg = config(tmp_path)
    sock = os.path.join(cfg.data_dir, "beaver.sock")
    listing = b'{"op": "jobs", "state": null, "limit": null}'
    me = os.getpid()
    lines: list[str] = []

    async def go() -> None:
        service = Service(cfg, serve_metrics=False, log=lines.append)
        await service.start()
        control = service.control
        assert control is not None
        try:
            jobs = [[f"w{i:05d}", {"n": i}, {"not_before": 4102444800}] for i in range(20_000)]
            enq = await asyncio.to_thread(request, cfg.data_dir, {"op": "enqueue", "jobs": jobs})
            assert enq["ok"] is True
            silent = []
            for _ in range(server.PEER_STREAMS):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                s.sendall(listing)
                s.shutdown(socket.SHUT_WR)
                silent.append(s)
            while control.streams < server.PEER_STREAMS:
                await asyncio.sleep(0.01)
            busy = await asyncio.to_thread(raw, sock, listing)
            assert busy == {
                "ok": False,
                "retry": True,
                "error": f"busy: {server.PEER_STREAMS} listings open from this process (pid {me})",
            }
            assert control.peers[me].streams == server.PEER_STREAMS
            other = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", OTHER_LISTING, sock],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert other.stdout == "20000\n", (other.stdout, other.stderr)
            assert control.streams == server.PEER_STREAMS  # this process's silent ones, still held
            for s in silent:
                s.close()
            while control.streams or control.tasks:
                await asyncio.sleep(0.01)
            assert control.peers == {}
            whole = await asyncio.to_thread(raw, sock, listing)
            assert whole is not None and len(whole["jobs"]) == 20_000
            assert lines == [
                f"warning: process {me} holds {server.PEER_STREAMS} listings open: more from it are "
                "answered busy (the other clients are served)"
            ]
        finally:
            service.request_stop()
            await service.close()

    asyncio.run(go())


def test_an_accept_error_is_one_warning_not_a_fatal_one(tmp_path: Path) -> None:
    lines: list[str] = []
    service = Service(config(tmp_path), log=lines.append)
    loop = asyncio.new_event_loop()
    context = {"message": "socket.accept() out of system resource", "socket": object()}
    for _ in range(50):
        exc = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        service._on_loop_error(loop, {**context, "exception": exc})
    loop.close()
    assert service.fatal is None
    assert lines == [
        "warning: the control socket cannot accept a connection ([Errno 24] Too many open files); "
        "retrying in 1 s"
    ]


# -- the lock -------------------------------------------------------------------------------------


def test_run_waits_for_an_offline_enqueue_and_refuses_another_run(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    lines: list[str] = []

    async def go(role: str) -> None:
        holder = DataDirLock(cfg.data_dir, role=role)
        holder.acquire()
        asyncio.get_running_loop().call_later(0.3, holder.release)
        service = Service(cfg, serve_metrics=False, control_socket=False, log=lines.append)
        await service.start()
        service.request_stop()
        await service.close()

    asyncio.run(go("enqueue"))
    assert lines == [
        f"waiting up to 60 s for the lock of {cfg.data_dir}, held by PID {os.getpid()} (beaver enqueue)"
    ]
    with pytest.raises(DataDirLocked, match=f"PID {os.getpid()}\\); stop it"):
        asyncio.run(go("run"))
    assert sys.modules["beaver_sim.runtime.service"].LOCK_WAIT == 60.0


def test_a_client_waits_out_a_full_listen_backlog(tmp_path: Path) -> None:
    path = str(tmp_path / "beaver.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    for _ in range(10):  # a flood: connect until the kernel's queue is full (EAGAIN)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    else:
        pytest.fail("the backlog never filled")

    def serve() -> None:
        time.sleep(0.3)
        listener.settimeout(5)
        while True:
            conn, _ = listener.accept()
            conn.settimeout(0.2)
            try:
                while conn.recv(1 << 16):
                    pass
            except TimeoutError:
                conn.close()  # a filler: never sends
                continue
            conn.sendall(b'{"ok": true}')
            conn.close()
            return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert request(str(tmp_path), {"op": "status"}, timeout=10) == {"ok": True}
    finally:
        t.join(10)
        for s in fillers:
            s.close()
        listener.close()


def test_a_full_spare_pool_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "SPARE_THREADS", 1)
    gate = threading.Event()
    full: list[str] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        handlers = {"blocked": lambda p: gate.wait()}
        workers = PoolWorkers(
            loop, Config(worker_count=1), handlers, on_spare_full=lambda: full.append("full")
        )
        try:
            for job in ("a", "b"):
                workers.submit(job, 1, 0, {"type": "blocked"}, lambda *a: None)
            await asyncio.sleep(0.05)
            assert workers.abandon("a", 1, 0).held is False and full == []
            assert workers.abandon("b", 1, 0).held is True and full == ["full"]
        finally:
            gate.set()
            workers.close(timeout=5)

    asyncio.run(go())

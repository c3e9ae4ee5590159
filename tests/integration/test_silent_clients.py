"""Clients of a real `beaver run` that do not play their part of the control socket: they never read
their answer (a listing, a large `job` answer, small answers in a flood), trickle a request that
never ends, or connect and stay idle. Each is bounded by the server (runtime/server.py:
WRITE_TIMEOUT, MAX_STREAMS, READ_TIMEOUT, MAX_CONNECTIONS), and meanwhile the others' enqueue,
status and listing round trips are answered. All of it against one controller, concurrently, so
that the bounds' waits overlap (about 15 s). The silent listings are asked by several processes,
each one more than its share (PEER_STREAMS), together as many as may be open at once, their
connections handed to this one to hold and peek at; the other connections are this process's, held
within its share (PEER_CONNECTIONS: test_client_shares.py is the process that goes beyond it)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.demo import RunProcess
from beaver_sim.runtime.server import (
    MAX_STREAMS,
    PEER_CONNECTIONS,
    PEER_STREAMS,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    request,
    socket_path,
)
from tests.beaver_process import BEAVER, beaver, clean, serving
from tests.hostile_client import from_another_process, read_all

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

RUN = ("--workers", "2", "--timeout", "5s", "--failure-rate", "0", "--metrics-port", "0")
WAITING = 60_000  # delayed jobs: a listing of them (~4.5 MB) is far more than the buffers hold
LATER = 4102444800  # 2100-01-01: never due while the test runs
BIG = "x" * 900_000  # the payload of one job: its `job` answer is ~900 KB
SETTLE = 60.0  # generous: how long a bound may take to show on a loaded machine
IDLE = 10  # connections that send nothing
PEERS = MAX_STREAMS // PEER_STREAMS  # processes whose shares of the listings fill MAX_STREAMS
OWN = 2  # listings this process asks for once they have
# what this process holds open at most: its listings, the `job` answers, the trickle, the idle ones
# and one more request; beyond its share, it would be answered busy
assert OWN + 3 + 1 + IDLE + 1 <= PEER_CONNECTIONS
SHARE_BUSY = re.compile(rf"busy: {PEER_STREAMS} listings open from this process \(pid (\d+)\)")


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[RunProcess, str]]:
    """A `beaver run` serving WAITING delayed jobs and the big one, enqueued offline."""
    jobs: list[dict[str, Any]] = [
        {"id": f"wait-{i:06d}", "payload": {"n": i}, "not_before": LATER} for i in range(WAITING)
    ]
    jobs.append({"id": "big", "payload": {"pad": BIG}, "not_before": LATER})
    (tmp_path / "jobs.json").write_bytes(orjson.dumps(jobs))
    data_dir = str(tmp_path / "d")
    beaver("enqueue", "--file", str(tmp_path / "jobs.json"), "--create", "--data-dir", data_dir)
    with serving(data_dir, RUN) as proc:
        yield proc, data_dir


def send(data_dir: str, req: bytes, finish: bool = True) -> socket.socket:
    """A connection that has sent `req` (and shut down its writing side when `finish`), read nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(SETTLE)
    s.connect(socket_path(data_dir))
    s.sendall(req)
    if finish:
        s.shutdown(socket.SHUT_WR)
    return s


def head(s: socket.socket, n: int = 20) -> bytes:
    """The first `n` bytes waiting on `s`, left unread (MSG_PEEK): what the server began to answer."""
    deadline = time.monotonic() + SETTLE
    while True:
        select.select([s], [], [], 1.0)
        data = s.recv(n, socket.MSG_PEEK)
        if len(data) == n or time.monotonic() > deadline:
            return data


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed its end of `s`, seen without reading (reading would take the
    answer and let the server go on): POLLRDHUP."""
    poll = select.poll()
    poll.register(s, select.POLLRDHUP)
    return bool(poll.poll(0))


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("ok") is True, reply
    return reply


def test_clients_that_never_read_or_never_finish_are_dropped_and_the_others_are_served(
    run: tuple[RunProcess, str],
) -> None:
    proc, data_dir = run
    pid = proc.proc.pid
    before = descriptors(pid)
    listing = orjson.dumps({"op": "jobs", "state": None, "limit": None})
    t0 = time.monotonic()
    # never read: PEERS processes ask for one listing more than their share each, which fills
    # MAX_STREAMS, then this process for OWN more; and three large `job` answers
    silent: list[socket.socket] = []
    heads: list[bytes] = []
    for _ in range(PEERS):
        theirs = from_another_process(socket_path(data_dir), listing, PEER_STREAMS + 1)
        silent += theirs
        heads += [head(s) for s in theirs]  # begun or refused before the next process asks
    own = [send(data_dir, listing) for _ in range(OWN)]
    silent += own
    heads += [head(s) for s in own]
    big = [send(data_dir, orjson.dumps({"op": "job", "id": "big"})) for _ in range(3)]
    # never finish: one trickles its request a byte at a time, IDLE connect and send nothing
    trickled: list[bytes] = []

    def trickle() -> None:
        with send(data_dir, b"", finish=False) as s:
            for b in b'{"op": "status"' * 100:
                try:
                    s.sendall(bytes([b]))
                except (BrokenPipeError, ConnectionResetError):
                    break  # answered and closed by the server
                time.sleep(0.25)
            trickled.append(read_all(s))

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    idle = [send(data_dir, b"", finish=False) for _ in range(IDLE)]
    # a flood of small requests whose answers are never read, the sockets kept open: each answered
    # (though left unread) before the next, so that each has ended on the server's side
    flood = []
    for _ in range(50):
        flood.append(send(data_dir, b'{"op": "status"}'))
        assert head(flood[-1], 12) == b'{"ok":true,"'

    # meanwhile the others are served: enqueue (durable), status, a listing that waits its turn
    lister = subprocess.Popen(
        [*BEAVER, "jobs", "--json", "--limit", "3", "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean(),
    )
    for i in range(20):
        ok(
            request(
                data_dir, {"op": "enqueue", "jobs": [[f"meanwhile-{i}", {"n": i}, {"not_before": LATER}]]}
            )
        )
        assert ok(request(data_dir, {"op": "status"}))["status"]["jobs"] == WAITING + 1 + i + 1
    assert sum(h.startswith(b'{"ok":true,"jobs":[') for h in heads) == MAX_STREAMS
    busy = [
        orjson.loads(read_all(s)) for s, h in zip(silent, heads, strict=True) if h.startswith(b'{"ok":false')
    ]
    # each process refused its one over its share, naming it; this process's by the cap
    assert all(b["ok"] is False and b["retry"] is True for b in busy), busy
    over = [m for b in busy if (m := SHARE_BUSY.fullmatch(b["error"]))]
    assert len(over) == PEERS and len({m[1] for m in over}) == PEERS, busy
    assert str(os.getpid()) not in {m[1] for m in over}
    assert [b["error"] for b in busy[PEERS:]] == [f"busy: {MAX_STREAMS} listings open at once"] * OWN
    assert all(head(s) == b'{"ok":true,"job":{"i' for s in big)

    # the listing client was told busy and asked again: answered once the silent ones were dropped
    out, err = lister.communicate(timeout=120)
    assert lister.returncode == 0, err
    assert [r["id"] for r in orjson.loads(out)] == ["wait-000000", "wait-000001", "wait-000002"]
    assert time.monotonic() - t0 >= WRITE_TIMEOUT  # it could not be served before a drop

    # the silent clients were dropped: their answers end short, the server holds their descriptors no more
    unread = [s for s, h in zip(silent, heads, strict=True) if h.startswith(b'{"ok":true')] + big
    wait_until(lambda: all(map(closed_by_server, unread)), "the silent clients to be dropped")
    held = [read_all(s) for s in unread]
    for body in held:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)  # cut short: the server stopped writing and closed
    drops = [line for line in proc.lines if "stopped taking its answer" in line]
    assert drops and all(f"for {WRITE_TIMEOUT:g} s: dropped" in line for line in drops)
    assert any(
        f"holds {PEER_STREAMS} listings open: more from it are answered busy" in line for line in proc.lines
    )

    # the ones that never finished were answered so, and closed
    trickler.join(SETTLE)
    wait_until(lambda: all(map(closed_by_server, idle)), "the idle connections to be closed")
    assert trickled and orjson.loads(trickled[0])["error"].startswith(
        f"bad request: incomplete after {READ_TIMEOUT:g} s"
    )
    for s in idle:
        assert orjson.loads(read_all(s))["error"].startswith("bad request: incomplete")
    # the flood's answers waited in the kernel's buffers, not the server's: every one is there
    assert all(ok(orjson.loads(read_all(s)))["status"]["running"] for s in flood)
    wait_until(lambda: descriptors(pid) <= before + 2, "the server to hold no connection")
    for s in [*silent, *big, *idle, *flood]:
        s.close()

    # one request per connection: a second one pipelined after it makes one bad request, answered
    with send(data_dir, b'{"op": "status"}{"op": "status"}') as s:
        answer = orjson.loads(read_all(s))
    assert answer["ok"] is False and answer["error"].startswith("bad request")
    rows = ok(request(data_dir, {"op": "jobs", "state": None, "limit": None}, timeout=60))["jobs"]
    assert len(rows) == WAITING + 1 + 20
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=60) == 0
    assert not [line for line in proc.lines if "Traceback" in line or "fatal" in line], proc.lines

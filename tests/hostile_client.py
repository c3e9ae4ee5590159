"""A hostile client of the control socket, shared by the unit and the real-process boundary tests
(and bench/bench_silent_clients.py). Run as a script, it is a process that floods the socket with
connections it leaks, one that holds answers it never reads, or one that makes connections for
another and hands them over:

    python tests/hostile_client.py flood SOCKET SECONDS
    python tests/hostile_client.py hold SOCKET N SECONDS  < REQUEST
    HAND_OVER_FD=FD python tests/hostile_client.py hand-over SOCKET N  < REQUEST"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson

SATURATED = "saturated"  # what `flood` prints once the server refuses one of its connections


def raw(path: str, data: bytes, timeout: float = 10) -> dict[str, Any] | None:
    """Send `data` to the socket at `path` as one request the way a hostile client may (carrying on
    when refused); the answer, or None if the server closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(s)
    return orjson.loads(answer) if answer else None


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    chunks = []
    try:
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def flood(path: str, seconds: float, every: float = 0.002) -> Counter[str]:
    """For `seconds`, open a connection to `path` every `every` seconds, send nothing on any and
    keep each until the server closes it: a process leaking connections faster than the server's
    bounds free them (an idle one is held READ_TIMEOUT, one refused busy is answered at once).
    Prints SATURATED once, at the first connection refused; returns the server's answers counted
    by error, pids written `P`."""
    poll = select.poll()
    held: dict[int, socket.socket] = {}
    seen: Counter[str] = Counter()
    said = False
    end = time.monotonic() + seconds  # wall-clock ok: a real process against a real server
    try:
        while time.monotonic() < end:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
            except OSError:
                s.close()
                seen["connect failed"] += 1
                continue
            held[s.fileno()] = s
            poll.register(s, select.POLLIN | select.POLLRDHUP)
            for fd, _ in poll.poll(every * 1000):
                poll.unregister(fd)
                with held.pop(fd) as answered:
                    body = read_all(answered)
                error = orjson.loads(body).get("error", "ok") if body else "closed without an answer"
                if error.startswith("busy") and not said:
                    said = True
                    print(SATURATED, flush=True)
                seen[re.sub(r"pid \d+", "pid P", error)] += 1
    finally:
        for s in held.values():
            s.close()
    return seen


def hold(path: str, data: bytes, n: int, seconds: float) -> None:
    """Send `data` to `path` as one request on each of `n` connections, then print the answers seen
    (by their first bytes, left unread: "began" for one not refused, else its error, pids written
    `P`, counted) and keep the connections for `seconds` without reading: a process that opens
    listings it never reads."""
    held = []
    seen: Counter[str] = Counter()
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            s.settimeout(60)
            s.connect(path)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            if s.recv(12, socket.MSG_PEEK).startswith(b'{"ok":false'):
                seen[re.sub(r"pid \d+", "pid P", orjson.loads(read_all(s))["error"])] += 1
            else:
                seen["began"] += 1
        print(orjson.dumps(seen).decode(), flush=True)
        time.sleep(seconds)
    finally:
        for s in held:
            s.close()


def from_another_process(path: str, data: bytes, n: int) -> list[socket.socket]:
    """`n` connections to `path` that have each sent `data` as one request and read nothing, made by
    a process of their own (their peer, by SO_PEERCRED: the pid that connected) and handed to this
    one (SCM_RIGHTS), so that one test process can hold, peek at and close several peers' clients.
    The maker exits once they are handed over; the server counts them under its pid still."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with mine, theirs:
        maker = subprocess.Popen(
            [sys.executable, __file__, "hand-over", path, str(n)],
            stdin=subprocess.PIPE,
            pass_fds=(theirs.fileno(),),
            env={**os.environ, "HAND_OVER_FD": str(theirs.fileno())},
        )
        assert maker.stdin is not None
        with maker.stdin:
            maker.stdin.write(data)
        fds: list[int] = []
        mine.settimeout(60)
        while len(fds) < n:
            _, got, _, _ = socket.recv_fds(mine, 1, n - len(fds))
            if not got:
                break
            fds.extend(got)
        assert maker.wait(timeout=60) == 0 and len(fds) == n, (maker.returncode, len(fds))
    return [socket.socket(fileno=fd) for fd in fds]


def hand_over(path: str, n: int, to: socket.socket) -> None:
    """Connect `n` times to `path`, send stdin's bytes as the request on each (shutting down the
    writing side) and send the connections on `to`."""
    data = sys.stdin.buffer.read()
    for _ in range(n):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            socket.send_fds(to, [b"c"], [s.fileno()])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "flood":
        print(orjson.dumps(flood(sys.argv[2], float(sys.argv[3]))).decode(), flush=True)
    elif len(sys.argv) == 5 and sys.argv[1] == "hold":
        hold(sys.argv[2], sys.stdin.buffer.read(), int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "hand-over":
        with socket.socket(fileno=int(os.environ["HAND_OVER_FD"])) as to:
            hand_over(sys.argv[2], int(sys.argv[3]), to)
    else:
        sys.exit(f"usage: {sys.argv[0]} flood SOCKET SECONDS | hold SOCKET N SECONDS | hand-over SOCKET N")

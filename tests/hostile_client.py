"""A hostile client of the control socket, shared by the unit and the real-process boundary tests.
Run as a script, it is a process that floods the socket with connections it leaks:

    python tests/hostile_client.py flood SOCKET SECONDS"""

from __future__ import annotations

import re
import select
import socket
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


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "flood":
        sys.exit(f"usage: {sys.argv[0]} flood SOCKET SECONDS")
    print(orjson.dumps(flood(sys.argv[2], float(sys.argv[3]))).decode(), flush=True)

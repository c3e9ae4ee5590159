"""A hostile client of the control socket, shared by the unit and the real-process boundary tests."""

from __future__ import annotations

import socket
from typing import Any

import orjson


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

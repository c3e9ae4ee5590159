"""The control socket: how `beaver enqueue` and `beaver status` talk to a running `beaver run`.

A unix socket `<data_dir>/beaver.sock`, one request per connection: the client sends one JSON object
and shuts down its writing side, the server answers with one JSON object and closes. Requests:
`{"op": "status"}`, `{"op": "enqueue", "jobs": [[id, payload], ...]}`, and `{"op": "job", "id"}` and
`{"op": "jobs", "state", "limit"}` (runtime/jobs.py); answers carry `"ok"` and either the result
(enqueue: `"enqueued"` new jobs and `"already_present"`) or `"error"` (plus `"retry": true` when the
server is shutting down). The socket
is only reachable by users who can open the data directory, like the WAL itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from beaver_sim.core.types import BeaverError

SOCKET_NAME = "beaver.sock"
MAX_PATH = 107  # sun_path holds 108 bytes on Linux, including the terminating NUL
# A client that never finishes its request (or sends without end) is answered with an error and
# dropped, so it holds no more than one idle task for this long and this much memory.
READ_TIMEOUT = 10.0
MAX_REQUEST = 256 << 20

Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlUnavailable(BeaverError):
    """No process is serving the data directory's control socket."""


class ControlLost(BeaverError):
    """The controller went away mid-request: the request may or may not have taken effect (a
    retried enqueue is safe: see Controller.enqueue)."""


def socket_path(data_dir: str) -> str:
    """Where the control socket of `data_dir` lives; ControlUnavailable if the path is too long."""
    path = os.path.join(data_dir, SOCKET_NAME)
    if len(os.fsencode(path)) > MAX_PATH:
        raise ControlUnavailable(
            f"{path}: too long for a unix socket ({MAX_PATH}-byte limit); use a shorter --data-dir path"
        )
    return path


def request(data_dir: str, req: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to the controller serving `data_dir` and return its answer.
    ControlUnavailable if nothing listens there (no socket, or a stale one left by kill -9)."""
    path = socket_path(data_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ControlUnavailable(f"{path}: no controller is listening ({e.strerror})") from None
        chunks = []
        try:
            s.sendall(orjson.dumps(req))
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ControlLost(f"{path}: the connection broke before an answer ({e.strerror})") from None
        except TimeoutError:
            raise BeaverError(f"{path}: no answer within {timeout:g} s") from None
    data = b"".join(chunks)
    if not data:
        raise ControlLost(f"{path}: the controller closed the connection without answering (did it stop?)")
    answer = orjson.loads(data)
    if not isinstance(answer, dict):
        raise BeaverError(f"{path}: unexpected answer {answer!r}")
    return answer


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """The request bytes up to the client's EOF; ValueError past MAX_REQUEST."""
    chunks, size = [], 0
    while chunk := await reader.read(1 << 16):
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError(f"over {MAX_REQUEST} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ControlServer:
    """Serves `answer(request)` on the control socket, on the running asyncio loop."""

    def __init__(self, path: str, answer: Answer) -> None:
        self.path, self.answer = path, answer
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # left by a process killed with -9; we hold the data-dir lock
        self.server = await asyncio.start_unix_server(self._client, path=self.path)
        os.chmod(self.path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            try:
                data = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
                req = orjson.loads(data)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except TimeoutError:
                answer: dict[str, Any] = {
                    "ok": False,
                    "error": f"bad request: incomplete after {READ_TIMEOUT:g} s (send one JSON object, "
                    "then shut down the writing side)",
                }
            except ValueError as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            else:
                answer = await self.answer(req)
            writer.write(orjson.dumps(answer))
            await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            self.tasks.discard(task)
            writer.close()

    async def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, give open requests `timeout` seconds to finish, remove the socket."""
        if self.server is not None:
            self.server.close()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

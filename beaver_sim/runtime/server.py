"""The control socket: how `beaver enqueue` and `beaver status` talk to a running `beaver run`.

A unix socket `<data_dir>/beaver.sock`, one request per connection: the client sends one JSON object
and shuts down its writing side, the server answers with one JSON object and closes (a large
answer, a listing of jobs, is built and written in pieces, one loop turn each). Requests:
`{"op": "status"}`, `{"op": "enqueue", "jobs": [[id, payload], ...]}`, and `{"op": "job", "id"}` and
`{"op": "jobs", "state", "limit"}` (runtime/jobs.py); answers carry `"ok"` and either the result
(enqueue: `"enqueued"` new jobs and `"already_present"`) or `"error"` (plus `"retry": true` when the
server is shutting down or busy). A client must send its request and take its answer: one that
does neither in time is dropped (the bounds below; docs/contracts.md, "The control socket", says
what each client sees). The socket is only reachable by users who can open the data directory,
like the WAL itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from beaver_sim.core import limits
from beaver_sim.core.types import BeaverError
from beaver_sim.runtime import forks
from beaver_sim.runtime.workers import describe_exception

SOCKET_NAME = "beaver.sock"
MAX_PATH = 107  # sun_path holds 108 bytes on Linux, including the terminating NUL
# Nothing a client sends, or fails to read, may stop or swamp the controller. A client that never
# finishes its request is answered with an error and dropped after READ_TIMEOUT; a request over
# MAX_REQUEST is refused as soon as its size passes it, unread beyond that; at most MAX_CONNECTIONS
# requests are open at once and BUFFER_BUDGET bytes buffered across them, a peer's share of each
# at most PEER_CONNECTIONS and PEER_BUFFER (beyond any: "busy", retry), so memory and file
# descriptors stay bounded whatever floods the socket, and one process flooding it does not keep
# the others out.
READ_TIMEOUT = 10.0
# A client that stops taking its answer for WRITE_TIMEOUT (each piece written must leave the
# server's buffer within it, the last one entirely: one that never reads, or reads a trickle) is
# dropped: its connection aborted, the unsent bytes and what the answer holds (a listing's ids)
# freed, one warning logged.
# A stall bound, not a total: a live client reads a listing of a million jobs in seconds, however
# long all of it takes. Without it a client that never read held its connection, its slot of
# MAX_CONNECTIONS and its answer for as long as it stayed connected.
WRITE_TIMEOUT = 10.0
# Answers built in pieces (listings) open at once, beyond which one is "busy", retry: each holds
# a copy of the ids it lists (8 bytes a job, 8 MB at 1,000,000) until its client has taken it all
# or is dropped, so clients that never read hold at most this many copies, not MAX_CONNECTIONS.
MAX_STREAMS = 8
MAX_REQUEST = 64 << 20
MAX_CONNECTIONS = 128
BACKLOG = 1024  # connections the kernel queues before connect() fails with EAGAIN (clients wait)
BUFFER_BUDGET = 2 * MAX_REQUEST
# One client process must not starve the others: each peer, the process that connected (its pid,
# which the kernel records at connect(): SO_PEERCRED, not something a client says), holds at most
# PEER_CONNECTIONS of the open requests and PEER_BUFFER of the bytes buffered (beyond either: "busy",
# retry, to that peer only). A command holds one connection at a time and a program with a pool
# of threads a few; a quarter of the cap leaves 96 slots to the others, and it takes four processes
# that each fill their share to fill the cap (what a hostile user can still do: docs/contracts.md).
# PEER_BUFFER is one request of the largest size: a peer can never take the whole budget.
PEER_CONNECTIONS = MAX_CONNECTIONS // 4
PEER_BUFFER = MAX_REQUEST
# A peer's share of the MAX_STREAMS listings (beyond it: "busy", retry, to that peer only), on the
# same reasoning: `beaver jobs` holds one at a time, and one process opening listings it never reads
# holds 2 for WRITE_TIMEOUT each, not all 8 for as long as it keeps at it.
PEER_STREAMS = MAX_STREAMS // 4
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# How long `ask` (status, job, jobs) asks a busy controller again, every BUSY_POLL seconds: 3 x
# WRITE_TIMEOUT, time for silent clients to be dropped and their slots freed.
BUSY_WAIT = 30.0
BUSY_POLL = 0.05
# A request holds a payload 3 levels down ({"jobs": [[id, payload]]}); deeper than a payload may
# nest (core.limits.MAX_DEPTH, the one bound the controller checks too) is refused when decoded.
MAX_PAYLOAD_DEPTH = limits.MAX_DEPTH
MAX_REQUEST_DEPTH = MAX_PAYLOAD_DEPTH + 3

# An answer is an object, or the bytes of one in pieces built one at a time: an answer whose size
# grows with the number of jobs (a listing) must not hold the loop while all of it is built.
Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | Iterator[bytes]]]


class ControlUnavailable(BeaverError):
    """No process is serving the data directory's control socket."""


class RequestTooLarge(BeaverError):
    """A request over MAX_REQUEST bytes: refused by size, never worth retrying as it is."""


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
    ControlUnavailable if nothing listens there (no socket, or a stale one left by kill -9);
    RequestTooLarge, before connecting, if the request is over MAX_REQUEST bytes."""
    path = socket_path(data_dir)
    body = orjson.dumps(req)
    if len(body) > MAX_REQUEST:
        raise RequestTooLarge(
            f"the request is {len(body)} bytes, over the {MAX_REQUEST >> 20} MiB a running controller "
            "reads at once; split the jobs into smaller files"
        )
    with _connect(path, timeout) as s:
        chunks: list[bytes] = []
        broke: OSError | None = None
        try:
            try:
                s.sendall(body)
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError) as e:
                broke = e  # refused before it was read whole ("busy"): its answer may be waiting
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError) as e:
            broke = broke or e
        except TimeoutError:
            raise BeaverError(f"{path}: no answer within {timeout:g} s") from None
    data = b"".join(chunks)
    if not data:
        if broke is not None:
            raise ControlLost(f"{path}: the connection broke before an answer ({broke.strerror})") from None
        raise ControlLost(f"{path}: the controller closed the connection without answering (did it stop?)")
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ControlLost(f"{path}: the answer was cut short ({len(data)} bytes)") from None
    if not isinstance(answer, dict):
        raise BeaverError(f"{path}: unexpected answer {answer!r}")
    return answer


def ask(data_dir: str, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """The answer of the controller serving `data_dir` to a request that changes nothing (status,
    job, jobs), or None when no controller serves it. A busy one (its cap, MAX_STREAMS listings or
    the asking process's share of either) is asked again for up to BUSY_WAIT seconds: a slot frees
    when a request ends or its client is dropped. An answer not ok is BeaverError."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        try:
            reply = request(data_dir, req, timeout)
        except ControlUnavailable:
            return None
        if reply.get("ok") or not reply.get("retry") or time.monotonic() > deadline:
            break
        time.sleep(BUSY_POLL)
    if not reply.get("ok"):
        raise BeaverError(reply.get("error", f"the controller did not answer the {req['op']} request"))
    return reply


def _connect(path: str, timeout: float) -> socket.socket:
    """A socket connected to `path`. A full listen backlog (a flood of connections: EAGAIN) is
    waited out, up to `timeout`: the server accepts on."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise ControlUnavailable(f"{path}: no controller is listening ({e.strerror})") from None
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise BeaverError(f"{path}: busy: no connection accepted within {timeout:g} s") from None
            time.sleep(0.01)
        except BaseException:
            s.close()
            raise


class Refused(Exception):
    """A request refused before it was read whole; `answer` says why."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(answer["error"])
        self.answer = answer


def too_deep(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` levels (`[]` is one). Level by
    level, not recursive: a deep value must not exhaust the stack that checks it."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for v in level
            for child in (v.values() if isinstance(v, dict) else v)
            if isinstance(child, dict | list)
        ]
    return False


def peer_pid(sock: Any) -> int:
    """The pid of the process that connected `sock`, as the kernel recorded it at connect()
    (SO_PEERCRED): the same for every connection that process made, whoever holds them now (a child
    it forked, a process it passed them to); 0 when the kernel cannot say (a peer in another pid
    namespace, a socket already gone): those share one share."""
    try:
        pid, _uid, _gid = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
    except OSError:
        return 0
    return int(pid)


@dataclass
class Share:
    """What one peer holds: its requests open (admitted, not yet done), their bytes buffered and
    its answers being written in pieces (listings, among its open requests)."""

    pid: int
    open: int = 0
    buffered: int = 0
    streams: int = 0


class ControlServer:
    """Serves `answer(request)` on the control socket, on the running asyncio loop. `log(kind,
    line)` gets one line for what goes wrong on a client's side of the socket (it never stops the
    server); `kind` is "control" (a client dropped, a request failed) or "peer" (a peer over its
    share), so that a flood of one does not hide the other."""

    def __init__(
        self, path: str, answer: Answer, log: Callable[[str, str], None] = lambda kind, line: None
    ) -> None:
        self.path, self.answer, self.log = path, answer, log
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # every connection's, refused ones included
        self.admitted = 0  # requests open (refused ones are not: a flood of them takes no slot)
        self.peers: dict[int, Share] = {}  # pid -> its share, while it has a request open
        self.buffered = 0  # request bytes held across open connections
        self.streams = 0  # answers being written in pieces (listings), at most MAX_STREAMS
        self.listening: list[int] = []

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # left by a process killed with -9; we hold the data-dir lock
        self.server = await asyncio.start_unix_server(self._client, path=self.path, backlog=BACKLOG)
        self.listening = [sock.fileno() for sock in self.server.sockets]
        for fd in self.listening:
            forks.keep_from_children(fd)
        os.chmod(self.path, 0o600)

    def stop_accepting(self) -> None:
        if self.server is not None:
            for fd in self.listening:
                forks.release(fd)
            self.listening = []
            self.server.close()

    def _admit(self, pid: int) -> Share:
        """Count a new request against its peer's share and the cap: Refused (busy, retry) beyond
        either, the peer's share first, so that a peer over it is told so and takes no slot."""
        share = self.peers.get(pid)
        if share is not None and share.open >= PEER_CONNECTIONS:
            self.log(
                "peer",
                f"warning: process {pid} holds {PEER_CONNECTIONS} control requests open: more from it "
                "are answered busy (the other clients are served)",
            )
            error = f"busy: {PEER_CONNECTIONS} requests open from this process (pid {pid})"
            raise Refused({"ok": False, "retry": True, "error": error})
        if self.admitted >= MAX_CONNECTIONS:
            raise Refused(
                {"ok": False, "retry": True, "error": f"busy: {MAX_CONNECTIONS} requests open at once"}
            )
        if share is None:
            share = self.peers[pid] = Share(pid)
        share.open += 1
        self.admitted += 1
        return share

    def _leave(self, share: Share) -> None:
        share.open -= 1
        self.admitted -= 1
        if not share.open:
            del self.peers[share.pid]  # a peer with nothing open is forgotten: its pid may be reused

    async def _read(self, reader: asyncio.StreamReader, share: Share) -> bytes:
        """The request bytes up to the client's EOF, counted against MAX_REQUEST, the peer's share
        and the budget."""
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await reader.read(1 << 16):
                size += len(chunk)
                share.buffered += len(chunk)
                self.buffered += len(chunk)
                if size > MAX_REQUEST:
                    raise Refused({"ok": False, "error": f"refused: the request is over {MAX_REQUEST} bytes"})
                if share.buffered > PEER_BUFFER:
                    error = (
                        f"busy: this process (pid {share.pid}) is sending over {PEER_BUFFER} bytes at once"
                    )
                    raise Refused({"ok": False, "retry": True, "error": error})
                if self.buffered > BUFFER_BUDGET:
                    raise Refused(
                        {"ok": False, "retry": True, "error": "busy: too many large requests at once"}
                    )
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            share.buffered -= size
            self.buffered -= size

    async def _request(self, reader: asyncio.StreamReader, share: Share) -> dict[str, Any]:
        """Read and decode one request; Refused (with the answer to send) if it cannot be served."""
        try:
            data = await asyncio.wait_for(self._read(reader, share), READ_TIMEOUT)
        except TimeoutError:
            raise Refused(
                {
                    "ok": False,
                    "error": f"bad request: incomplete after {READ_TIMEOUT:g} s (send one JSON object, "
                    "then shut down the writing side)",
                }
            ) from None
        try:
            req = limits.loads_exact(data)  # a number JSON would change is refused by enqueue, named
        except ValueError as e:
            raise Refused({"ok": False, "error": f"bad request: {e}"}) from None
        if not isinstance(req, dict):
            raise Refused({"ok": False, "error": "bad request: a request is a JSON object"})
        if too_deep(req, MAX_REQUEST_DEPTH):
            raise Refused(
                {
                    "ok": False,
                    "error": f"bad request: nested deeper than {MAX_REQUEST_DEPTH} levels (a payload may "
                    f"nest {MAX_PAYLOAD_DEPTH})",
                }
            )
        return req

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        sock = writer.get_extra_info("socket")
        fd = sock.fileno()
        forks.keep_from_children(fd)  # a handler's forked child must not hold the client's EOF back
        share: Share | None = None
        try:
            try:
                share = self._admit(peer_pid(sock))
                answer = await self.answer(await self._request(reader, share))
            except Refused as e:
                answer = e.answer
            except ConnectionError:
                raise
            except Exception as e:  # a request no check foresaw: refused, never a reason to stop
                self.log("control", f"warning: a control request failed: {describe_exception(e)}")
                answer = {"ok": False, "error": f"bad request: {describe_exception(e)}"}
            if isinstance(answer, dict):
                await self._send(writer, orjson.dumps(answer))
            else:
                assert share is not None  # a listing answers an admitted request
                await self._stream_within_shares(writer, share, answer)
            await self._flush(writer)
        except ConnectionError:
            pass  # the client went away; nothing to answer
        except TimeoutError:
            writer.transport.abort()  # unsent bytes dropped, the descriptor closed now
            self.log(
                "control",
                f"warning: a control client stopped taking its answer for {WRITE_TIMEOUT:g} s: dropped",
            )
        finally:
            if share is not None:
                self._leave(share)
            self.tasks.discard(task)
            forks.release(fd)
            writer.close()

    async def _stream_within_shares(
        self, writer: asyncio.StreamWriter, share: Share, answer: Iterator[bytes]
    ) -> None:
        """Write a listing if its peer's share and the cap of listings allow, else busy (retry), the
        peer's share first as in `_admit`: a listing not begun has copied nothing, dropped as is."""
        if share.streams >= PEER_STREAMS:
            self.log(
                "peer",
                f"warning: process {share.pid} holds {PEER_STREAMS} listings open: more from it are "
                "answered busy (the other clients are served)",
            )
            error = f"busy: {PEER_STREAMS} listings open from this process (pid {share.pid})"
            await self._send(writer, orjson.dumps({"ok": False, "retry": True, "error": error}))
            return
        if self.streams >= MAX_STREAMS:
            busy = {"ok": False, "retry": True, "error": f"busy: {MAX_STREAMS} listings open at once"}
            await self._send(writer, orjson.dumps(busy))
            return
        share.streams += 1
        self.streams += 1
        try:
            await self._stream(writer, answer)
        finally:
            share.streams -= 1
            self.streams -= 1

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data` and wait until the transport has passed it on (to below its low-water
        mark); TimeoutError if the client does not take it within WRITE_TIMEOUT."""
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _flush(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the transport holds none of the answer (it is in the kernel's buffer, which
        the kernel bounds, or read), so that closing frees the connection now; TimeoutError after
        WRITE_TIMEOUT. Closed with bytes still buffered, a transport stays open, off the count of
        open requests, until its client reads them: a client that never did kept it forever."""
        writer.transport.set_write_buffer_limits(high=0)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _stream(self, writer: asyncio.StreamWriter, pieces: Iterator[bytes]) -> None:
        """Write an answer built in pieces, giving the loop a turn after each, so that the other
        clients, dispatches, results and timers wait at most one piece's building, never the whole
        answer's. A client gone meanwhile ends it (ConnectionError), one that takes nothing for
        WRITE_TIMEOUT too (TimeoutError); a piece that fails to build cuts the answer short (the
        client says so), logged, and the server goes on."""
        while True:
            try:
                piece = next(pieces, None)
            except Exception as e:
                self.log("control", f"warning: a control answer failed midway: {describe_exception(e)}")
                return
            if piece is None:
                return
            if writer.is_closing():
                raise ConnectionResetError("the client went away")
            await self._send(writer, piece)
            await asyncio.sleep(0)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, give open requests `timeout` seconds to finish, remove the socket."""
        self.stop_accepting()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

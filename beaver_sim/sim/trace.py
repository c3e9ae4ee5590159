"""Crash states from a real run's system calls, in the spirit of ALICE (Pillai et al., OSDI 2014,
"All File Systems Are Not Created Equal"): SimFS proves the design on the simulator's own model of
the calls; this replays the calls a real `beaver` process made (recorded with `strace`) so the check
covers what RealFS, the lock and the runtime really do, in the order they did it.

`parse` turns an `strace -f -y -xx` log into file-system operations on paths under one root, plus
the acknowledgements the process sent (stdout or the control socket). `Disk` applies a prefix of
them and tracks, per file, the bytes written and the bytes its last fsync made durable, and per
directory entry whether a directory fsync made it durable. `Disk.crash` gives the files a restart
would find under four models:
- `process`: every call took effect, nothing lost (kill -9: the page cache survives);
- `power-loss`: only synced bytes under names made durable by a directory fsync;
- `torn`: as `power-loss`, plus the first half of each file's unsynced appended bytes (a write
  cut short by the power loss: usually mid-record);
- `metadata-first`: every namespace call (create, rename, unlink, mkdir) persisted in order, but
  no unsynced data (a file system that writes metadata ahead of data: a renamed tmp file may be
  empty). Data appended past the last sync is dropped; in-place overwrites keep the old bytes.
`check` runs the real recovery (`Storage.open`, as `beaver run` does) and the read-only `wal verify`
(`inspect`) on the state after every prefix, and the invariant checker on what came back."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import inspect
from beaver_sim.errors import BeaverError
from beaver_sim.sim.checker import Checker, Violation
from beaver_sim.sim.fs import POWER_LOSS, PROCESS, SimFS
from beaver_sim.storage.log_format import parse_header, records, segment_seq

METADATA_FIRST = "metadata-first"
TORN = "torn"
MODELS = (PROCESS, POWER_LOSS, TORN, METADATA_FIRST)
CALLS = (
    "openat,write,pwrite64,writev,pwritev,lseek,ftruncate,fallocate,close,rename,renameat,"
    "renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,fsync,fdatasync,sendto"
)
_LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*?)(?: <unfinished \.\.\.>)?$")
_DONE = re.compile(r"^(.*)\)\s+=\s+(-?\d+)(?:<[^>]*>)?(?:\s.*)?$", re.S)
_FD = re.compile(r"^(-?\d+|AT_FDCWD)<((?:\\x[0-9a-f]{2})*)>(\(deleted\))?$")


class TraceError(ValueError):
    """A trace this replayer cannot rebuild file contents from (a truncated string, an
    unsupported call on a data file)."""


def strace_argv(out: str, argv: list[str]) -> list[str]:
    """`argv` under strace, logging to `out` every call `parse` needs, strings in hex and whole."""
    return ["strace", "-f", "-y", "-xx", "-s", str(1 << 24), "-e", f"trace={CALLS}", "-o", out, *argv]


@dataclass(frozen=True, slots=True)
class Op:
    """One file-system call on a path under the root, or an acknowledgement (`ack`, `data` the
    bytes sent). `offset` -1: append at the end (O_APPEND). `size`: truncate/fallocate length."""

    kind: str  # mkdir create truncate write fallocate rename unlink rmdir sync ack
    path: str
    data: bytes = b""
    offset: int = -1
    size: int = 0
    target: str = ""  # a rename's destination
    flags: str = ""  # open/fallocate flags as strace prints them
    line: str = ""  # where it came from: `<trace file>:<line>`


def _hex(token: str, where: str) -> str:
    """The text of a quoted `-xx` string token; a string strace cut short cannot be replayed."""
    if not (token.startswith('"') and token.endswith('"')):
        raise TraceError(f"{where}: expected a whole string, got {token[:40]!r} (raise strace -s)")
    return _bytes(token[1:-1]).decode("utf-8", "surrogateescape")


def _bytes(escaped: str) -> bytes:
    return bytes.fromhex(escaped.replace("\\x", ""))


def _fd(token: str, where: str) -> tuple[str, str]:
    """(fd, path) of an `-y` file-descriptor token such as `4<\\x2f...>`. A file unlinked while
    open has no path any more: it is named `(deleted)/...`, under no root."""
    m = _FD.match(token)
    if m is None:
        raise TraceError(f"{where}: no path on descriptor {token[:40]!r} (strace -y)")
    path = _bytes(m.group(2)).decode("utf-8", "surrogateescape")
    return m.group(1), f"(deleted){path}" if m.group(3) else path


def _abs(token: str, where: str) -> str:
    """The path of a call without a directory descriptor (rename, unlink, mkdir): the trace does
    not say which directory a relative one meant."""
    path = _hex(token, where)
    if not path.startswith("/"):
        raise TraceError(f"{where}: relative path {path!r}; run with an absolute data directory")
    return posixpath.normpath(path)


def _at(dirfd: str, path: str, where: str) -> str:
    return posixpath.normpath(posixpath.join(_fd(dirfd, where)[1], path))


def completed_calls(text: str) -> Iterator[tuple[int, str, str, int]]:
    """(line number, call, argument text, result) of each call of an `strace -f` log that
    succeeded, in the order they completed: a call another thread interrupted (`<unfinished ...>`,
    then `<... resumed>`) is joined and counts at its end; failed calls are left out."""
    started: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        m = _LINE.match(raw)
        if m is None:
            continue
        pid, resumed, call, rest = m.groups()
        if raw.endswith("<unfinished ...>"):
            started[pid] = (call, rest)
            continue
        if resumed:
            call, before = started.pop(pid, (resumed, ""))
            rest = before + rest
        done = _DONE.match(rest)  # strace pads short lines: `fsync(7</d>)      = 0`
        if done is not None and not done.group(2).startswith("-"):
            yield number, call, done.group(1), int(done.group(2))


def parse(text: str, root: str, ack: re.Pattern[bytes], name: str = "trace") -> list[Op]:
    """The operations on files under `root` in the order they completed (a call interrupted by
    another thread counts at its end; failed calls are left out), and as `ack` ops the writes and
    sends outside `root` whose bytes match `ack`. Writes without O_APPEND land at the descriptor's
    offset, which is followed through open, write, lseek and close."""
    root = posixpath.normpath(root)
    offsets: dict[tuple[str, str], int] = {}  # (fd, path) -> position of a non-append descriptor
    ops: list[Op] = []

    def under(path: str) -> bool:
        return path == root or path.startswith(root + "/")

    for number, call, text_args, result in completed_calls(text):
        where = f"{name}:{number}"
        args = text_args.split(", ")

        def add(kind: str, path: str, **kw: Any) -> None:
            if under(path):
                ops.append(Op(kind, path, line=where, **kw))  # noqa: B023 (called at once)

        if call == "openat":
            path, flags = _at(args[0], _hex(args[1], where), where), args[2]
            if under(path) and "O_CREAT" in flags:
                add("create", path, flags=flags)
            if under(path) and "O_TRUNC" in flags:
                add("truncate", path, size=0)
            if "O_APPEND" not in flags:
                offsets[(str(result), path)] = 0
        elif call == "close":
            offsets.pop(_fd(args[0], where), None)
        elif call in ("write", "pwrite64", "sendto"):
            fd, path = _fd(args[0], where)
            if not args[1].endswith('"'):
                raise TraceError(f"{where}: write to {path} cut short in the trace (raise strace -s)")
            data = _bytes(args[1].strip('"'))[:result]
            if not under(path):
                if call != "pwrite64" and ack.search(data):
                    ops.append(Op("ack", path, data, line=where))
                continue
            if call == "pwrite64":
                add("write", path, data=data, offset=int(args[3]))
            elif (fd, path) in offsets:
                add("write", path, data=data, offset=offsets[(fd, path)])
                offsets[(fd, path)] += result
            else:
                add("write", path, data=data)
        elif call in ("writev", "pwritev"):
            if under(_fd(args[0], where)[1]):
                raise TraceError(f"{where}: {call} on a data file is not replayed")
        elif call == "lseek":
            key = _fd(args[0], where)
            if key in offsets:
                offsets[key] = result
        elif call == "ftruncate":
            add("truncate", _fd(args[0], where)[1], size=int(args[1]))
        elif call == "fallocate":
            add("fallocate", _fd(args[0], where)[1], offset=int(args[2]), size=int(args[3]), flags=args[1])
        elif call in ("fsync", "fdatasync"):
            path = _fd(args[0], where)[1]
            if path == posixpath.dirname(root):  # what makes `root` itself durable
                ops.append(Op("sync", path, line=where))
            add("sync", path)
        elif call in ("rename", "renameat", "renameat2"):
            if call == "rename":
                src, dst = _abs(args[0], where), _abs(args[1], where)
            else:
                src, dst = (
                    _at(args[0], _hex(args[1], where), where),
                    _at(args[2], _hex(args[3], where), where),
                )
            add("rename", src, target=dst)
        elif call in ("unlink", "rmdir"):
            add(call, _abs(args[0], where))
        elif call == "unlinkat":
            add("rmdir" if "AT_REMOVEDIR" in args[2] else "unlink", _at(args[0], _hex(args[1], where), where))
        elif call == "mkdir":
            add("mkdir", _abs(args[0], where))
        elif call == "mkdirat":
            add("mkdir", _at(args[0], _hex(args[1], where), where))
    return ops


@dataclass(slots=True)
class _File:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""  # the contents at the last fsync


class Disk:
    """The files under `root` after a prefix of the operations, and what each crash model keeps.
    `root` is assumed missing before the first operation; its parent exists and is durable."""

    def __init__(self, root: str) -> None:
        self.root = posixpath.normpath(root)
        self.names: dict[str, _File | None] = {}  # path -> file, or None for a directory
        self.durable: dict[str, _File | None] = {}  # the entries a directory fsync made durable

    def apply(self, op: Op) -> None:
        names, path = self.names, op.path
        if op.kind == "mkdir":
            names[path] = None
        elif op.kind == "create":
            names.setdefault(path, _File())
        elif op.kind in ("write", "truncate", "fallocate"):
            self._change(self._file(op), op)
        elif op.kind == "rename":
            if names.get(path) is None:
                raise TraceError(f"{op.line}: rename of {path}, which is not a file here")
            names[op.target] = names.pop(path)
        elif op.kind in ("unlink", "rmdir"):
            names.pop(path, None)  # e.g. the control socket, which bind(2) created untraced
        elif op.kind == "sync":
            f = names.get(path)
            if f is not None:
                f.durable = bytes(f.data)
            else:  # a directory: its entries are now as they are named
                keep = {k: v for k, v in self.durable.items() if posixpath.dirname(k) != path}
                keep.update((k, v) for k, v in names.items() if posixpath.dirname(k) == path)
                self.durable = keep

    def _file(self, op: Op) -> _File:
        f = self.names.get(op.path)
        if f is None:
            raise TraceError(f"{op.line}: {op.kind} on {op.path}, which is not a file here")
        return f

    @staticmethod
    def _change(f: _File, op: Op) -> None:
        data = f.data
        if op.kind == "truncate":
            del data[op.size :]
            data.extend(bytes(op.size - len(data)))
        elif op.kind == "write":
            at = len(data) if op.offset < 0 else op.offset
            data.extend(bytes(max(0, at - len(data))))
            data[at : at + len(op.data)] = op.data
        else:  # fallocate: allocate (extends unless KEEP_SIZE), or zero a range
            end = op.offset + op.size
            if "PUNCH_HOLE" in op.flags or "ZERO_RANGE" in op.flags:
                zero_to = min(end, len(data)) if "KEEP_SIZE" in op.flags else end
                data.extend(bytes(max(0, zero_to - len(data))))
                data[op.offset : zero_to] = bytes(max(0, zero_to - op.offset))
            elif "KEEP_SIZE" not in op.flags:
                data.extend(bytes(max(0, end - len(data))))

    def crash(self, model: str) -> dict[str, bytes | None]:
        """Path -> bytes (None: a directory) a restart finds under `model`: entries whose parent
        survived, sorted by path."""
        if model == POWER_LOSS:
            entries = {p: (None if f is None else f.durable) for p, f in self.durable.items()}
        elif model == TORN:
            entries = {p: (None if f is None else _torn(f)) for p, f in self.durable.items()}
        elif model == METADATA_FIRST:
            entries = {p: (None if f is None else f.durable[: len(f.data)]) for p, f in self.names.items()}
        elif model == PROCESS:
            entries = {p: (None if f is None else bytes(f.data)) for p, f in self.names.items()}
        else:
            raise ValueError(f"unknown crash model {model!r}; expected one of {MODELS}")
        alive = {posixpath.dirname(self.root)}
        out: dict[str, bytes | None] = {}
        for path in sorted(entries, key=lambda p: (p.count("/"), p)):  # parents first
            if posixpath.dirname(path) in alive:
                out[path] = entries[path]
                if entries[path] is None:
                    alive.add(path)
        return dict(sorted(out.items()))


def _torn(f: _File) -> bytes:
    """The synced bytes and the first half of what was appended after them."""
    synced, data = f.durable, f.data
    if len(data) <= len(synced) or data[: len(synced)] != synced:
        return synced  # nothing appended since the sync (or the file was cut, then rewritten)
    return synced + bytes(data[len(synced) : (len(synced) + len(data)) // 2])


def materialise(state: dict[str, bytes | None]) -> SimFS:
    """A SimFS holding `state`, all of it durable: the disk a restarted machine finds."""
    fs = SimFS()
    for path, data in state.items():
        if data is None:
            fs.makedirs(path)
        else:
            f = fs.create(path)
            f.write(data)
            f.sync()
    for path in sorted({posixpath.dirname(p) for p in state}):
        if fs.is_dir(path):
            fs.sync_dir(path)
    return fs


def _digest(state: dict[str, bytes | None]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for path, data in state.items():
        h.update(b"%s\0%d\0%s" % (path.encode(), -1 if data is None else len(data), data or b""))
    return h.digest()


@dataclass(slots=True)
class Claim:
    """What the synced WAL bytes held (what the checker holds recovery to): the highest seq, the
    LSN after it, and the jobs whose ACK record was synced."""

    seq: int = 0
    lsn: int = 0
    completed: set[str] = field(default_factory=set)

    def read(self, data: bytes) -> None:
        """Add one segment's synced bytes (lines after a bad one, e.g. preallocated zeros, are not
        records)."""
        line = data.split(b"\n", 1)[0]
        header = parse_header(line)
        base = header.get("base_lsn") if header is not None else None
        if type(base) is not int:
            return
        lsn = base + len(line) + 1
        for rec, _start, end in records(data):
            try:
                self.seq = max(self.seq, rec["seq"])
            except (KeyError, TypeError):
                break
            lsn = end
            if rec["type"] == R.ACK:
                self.completed.add(rec["job"])
        self.lsn = max(self.lsn, lsn)


@dataclass(slots=True)
class Outcome:
    """One crash model over every prefix: states checked, distinct states, states `wal verify`
    found a torn tail in (recovery cut it), and the violations."""

    model: str
    states: int = 0
    distinct: int = 0
    torn: int = 0
    violations: list[Violation] = field(default_factory=list)


def check(
    ops: list[Op],
    batches: list[dict[str, dict[str, Any]]],
    root: str,
    models: Iterable[str] = MODELS,
    max_retry: int = 3,
    **options: Any,
) -> list[Outcome]:
    """For every prefix of `ops` (the empty one too) and every model: `wal verify` on the crash
    state must find nothing or a torn tail, the real recovery must start, and the recovered state
    must keep every acknowledged job with its payload (the n-th `ack` op acknowledges `batches[n]`,
    job -> payload), every synced ACK and the synced seqs (checker invariants 1, 2, 3, 5, 8).
    `options` go to `Storage.open`."""
    root = posixpath.normpath(root)
    wal_dir, snap_dir = posixpath.join(root, "wal"), posixpath.join(root, "snap")
    outcomes = [Outcome(model) for model in models]
    disk, claim, acked = Disk(root), Claim(), 0
    seen: dict[str, set[bytes]] = {o.model: set() for o in outcomes}
    for k in range(len(ops) + 1):
        if k:
            op = ops[k - 1]
            disk.apply(op)
            if op.kind == "ack":
                acked += 1
            elif op.kind == "sync" and segment_seq(posixpath.basename(op.path)) is not None:
                claim.read(disk._file(op).durable)
        where = (
            f"after op {k} ({ops[k - 1].line}: {ops[k - 1].kind} {ops[k - 1].path})" if k else "at the start"
        )
        for out in outcomes:
            state = disk.crash(out.model)
            seen[out.model].add(_digest(state))
            checker = Checker(max_retry, token="")
            for batch in batches:
                checker.submit(batch.items())
            for batch in batches[:acked]:
                checker.acknowledge(batch)
            checker.claim(f"{out.model} {where}", sorted(claim.completed), claim.seq, claim.lsn)
            out.states += 1
            fs = materialise(state)
            found = inspect(fs, wal_dir, snap_dir)
            if not found.ok:
                checker.refused(BeaverError(f"wal verify: {found.problem}"))
            else:
                out.torn += found.problem is not None
                try:
                    storage = Storage.open(fs, root, **options)
                except BeaverError as e:
                    checker.refused(e)
                else:
                    checker.recovered(storage.state, storage.wal.lsn)
            out.violations += checker.violations
    for out in outcomes:
        out.distinct = len(seen[out.model])
    return outcomes

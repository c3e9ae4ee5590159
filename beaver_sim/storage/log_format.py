"""The WAL's bytes, owned here alone: the writer (storage/wal.py), recovery, the operator's tools and
the simulator's readers all frame, name and parse the log through this module, as LevelDB's reader
and writer share log_format.h.

A segment file `wal-<first seq, 20 digits>.log` holds a header line, then one line per record:
`<crc32c:8 hex> <body length> <body JSON>\\n`. The CRC covers the exact body bytes and is chained
(crc_i = crc32c(body_i, crc_{i-1})); the header's own CRC starts a fresh chain, and its `prev_crc`
carries the log's chain across the segment boundary. No record byte is ever 0, so zeros are never
part of a record (see storage/wal.py on preallocation)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson


def _load_crc32c() -> Callable[..., int]:
    """crc32c's C function (`crc32c(data, value=0)`), loaded without its package's `__init__`: that
    imports importlib.metadata for the package's `__version__`, 20-30 ms of every process's start,
    a third of `beaver sim`'s imports. The package's own import wherever its extension is not where
    crc32c 2.x keeps it, or does not give the standard check value."""
    try:
        from importlib.machinery import PathFinder

        package = PathFinder.find_spec("crc32c")
        where = package.submodule_search_locations if package is not None else None
        spec = PathFinder.find_spec("crc32c._crc32c", where) if where else None
        if spec is None or spec.loader is None:
            raise ImportError("crc32c._crc32c not found")
        module = spec.loader.create_module(spec)
        if module is None:
            raise ImportError("crc32c._crc32c is not an extension module")
        spec.loader.exec_module(module)
        fn: Callable[..., int] = module.crc32c
        if fn(b"123456789") == 0xE3069283:  # CRC-32C's check value (RFC 3720)
            return fn
    except (ImportError, OSError, AttributeError, TypeError, ValueError):
        pass  # a layout this does not know: the package's import, below
    from crc32c import crc32c as packaged

    return packaged


crc32c = _load_crc32c()  # every beaver_sim module takes crc32c from here

MAGIC = "beaver-wal"
VERSION = 1
SECTOR = 512  # the unit a disk writes whole: a block lost to a power loss ends on a multiple of it
FSYNC_POLICIES = ("always", "interval", "never")
PREALLOCATE = ("none", "fallocate", "zeros")  # and "auto" when opening: fallocate where the FS can
RECOVERY = ("tolerate-tail", "strict")  # what a whole last record that fails its CRC is: torn, or damage

Record = dict[str, Any]

_SEGMENT_NAME = re.compile(r"wal-(\d{20})\.log")


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record has seq `first_seq`."""
    return f"wal-{first_seq:020d}.log"


def segment_seq(name: str) -> int | None:
    """The first seq a segment's file name carries; None if `name` (a base name) is not a segment's."""
    m = _SEGMENT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


LINE = b"%08x %d %s\n"  # % (crc, len(body), body): the WAL's append formats it inline (its hot path)


def frame(body: bytes, crc: int) -> bytes:
    """One line of the log; `crc` is the chained CRC of `body`."""
    return LINE % (crc, len(body), body)


def header_line(first_seq: int, base_lsn: int, prev_crc: int) -> bytes:
    """A segment's first line: the seq and LSN it starts at and the chain value it continues."""
    body = orjson.dumps(
        {
            "magic": MAGIC,
            "v": VERSION,
            "first_seq": first_seq,
            "base_lsn": base_lsn,
            "prev_crc": prev_crc,
            "crc": "crc32c",
        }
    )
    return frame(body, crc32c(body))


def parse_header(line: bytes) -> dict[str, Any] | None:
    """The fields of a segment header line (without its newline) whose framing and CRC hold and
    whose magic is this log's; None otherwise. The version is the caller's to check."""
    parts = line.split(b" ", 2)
    try:
        if len(parts) != 3 or int(parts[1]) != len(parts[2]) or crc32c(parts[2]) != int(parts[0], 16):
            return None
        h = orjson.loads(parts[2])
    except ValueError:
        return None
    if not isinstance(h, dict) or h.get("magic") != MAGIC:
        return None
    return h


def _framing(line: bytes) -> tuple[int, bytes] | str:
    """(stored crc, body) of a record line whose framing holds, or the reason it does not."""
    parts = line.split(b" ", 2)
    if len(parts) != 3 or len(parts[0]) != 8 or not parts[1].isdigit():
        return "malformed record"
    body = parts[2]
    if int(parts[1]) != len(body):
        return "record length mismatch"
    try:
        return int(parts[0], 16), body
    except ValueError:
        return "malformed checksum"


def parse_line(line: bytes, prev_crc: int) -> tuple[int, bytes] | str:
    """(stored crc, body) of a good record line (without its newline) chained from `prev_crc`, or
    the reason it is bad."""
    got = _framing(line)
    if isinstance(got, str):
        return got
    if crc32c(got[1], prev_crc) != got[0]:
        return "checksum mismatch"
    return got


def unframe(line: bytes) -> bytes | None:
    """The body of a record line (without its newline) whose framing holds, its CRC not checked;
    None if `parse_line` would call it malformed."""
    got = _framing(line)
    return None if isinstance(got, str) else got[1]


def claimed(line: bytes) -> tuple[int | None, bytes | None]:
    """What a damaged record line (without its newline) may still tell: the CRC its first field
    claims (None unless that field is 8 hex digits) and its body, everything after the second space
    (None if it has no second space). Neither is checked; the readers that salvage a damaged log go
    on from them (the chain after the line is its claimed CRC, or the one its body should have had)."""
    parts = line.split(b" ", 2)
    crc = None
    if len(parts[0]) == 8:
        try:
            crc = int(parts[0], 16)
        except ValueError:
            pass
    return crc, (parts[2] if len(parts) == 3 else None)


def records(data: bytes | bytearray, start: int = 0) -> Iterator[tuple[Record, int, int]]:
    """One segment's bytes as they are on disk -> (record, start LSN, end LSN) for each whole line
    (ended by its newline), in order, while its body decodes to a JSON object; it stops at the first
    that does not (zeros, a cut line, damage). Nothing if the header's body gives no `base_lsn`.
    `start`: the file offset of the line to begin at, where an earlier call's last record ended (a
    reader of a growing segment reads each byte once). Neither the header's CRC nor any record's is
    checked: this reads what the bytes say, for the simulator's and the labs' observers, never for
    recovery (that is storage.wal.scan)."""
    nl = data.find(b"\n")
    if nl < 0:
        return
    try:
        base = orjson.loads(data[:nl].split(b" ", 2)[2])["base_lsn"]
    except (ValueError, IndexError, KeyError, TypeError):
        return  # no readable header: nothing in this file can be placed in the log
    offset = max(start, nl + 1)
    for line in data[offset:].split(b"\n")[:-1]:  # the last piece is cut short, or empty
        try:
            rec = orjson.loads(line.split(b" ", 2)[2])
        except (ValueError, IndexError):
            return
        if not isinstance(rec, dict):
            return
        start = base + offset
        offset += len(line) + 1
        yield rec, start, base + offset

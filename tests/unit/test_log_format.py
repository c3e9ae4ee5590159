"""storage/log_format.py, the one owner of the WAL's bytes: names, framing, and `records`, the
observers' reader, held to what the real log wrote and recovery replays."""

from __future__ import annotations

import gc
import itertools
import posixpath
import subprocess
import sys

import pytest
from crc32c import crc32c

from beaver_sim.core import records as R
from beaver_sim.sim.fs import SimFS
from beaver_sim.speed import paused_gc
from beaver_sim.storage import log_format as F
from beaver_sim.storage.snapshot import snapshot_name, snapshot_seq
from beaver_sim.storage.wal import WriteAheadLog, list_segments, scan

D = "/wal"


def written(n: int, segment_bytes: int = 1 << 20, **options: object) -> SimFS:
    """A log of `n` ENQUEUE records, flushed one by one."""
    fs = SimFS()
    wal, _, _ = WriteAheadLog.open(fs, D, segment_bytes=segment_bytes, **options)  # type: ignore[arg-type]
    for i in range(n):
        wal.append(R.enqueue(f"job-{i}", {"n": i}))
        wal.flush()
    wal.close()
    return fs


def read_all(fs: SimFS) -> list[tuple[dict[str, object], int, int]]:
    out = []
    for name in list_segments(fs, D):
        out += F.records(fs.read_bytes(posixpath.join(D, name)))
    return out


def test_names_round_trip() -> None:
    assert F.segment_seq(F.segment_name(1234)) == 1234
    assert snapshot_seq(snapshot_name(99)) == 99
    for name in ("wal-1.log", "wal-00000000000000000001.log.broken", "snap-00000000000000000001.json"):
        assert F.segment_seq(name) is None
    assert snapshot_seq(F.segment_name(5)) is None


def test_parse_line_and_header_invert_frame() -> None:
    body = b'{"seq":1}'
    line = F.frame(body, crc32c(body, 7))
    assert F.parse_line(line[:-1], 7) == (crc32c(body, 7), body)
    assert F.parse_line(line[:-1], 8) == "checksum mismatch"
    h = F.parse_header(F.header_line(5, 300, 42)[:-1])
    assert h is not None and (h["first_seq"], h["base_lsn"], h["prev_crc"]) == (5, 300, 42)
    assert F.parse_header(F.header_line(5, 300, 42)[:-2]) is None


@pytest.mark.parametrize("preallocate", ["none", "zeros"])
def test_records_are_what_recovery_replays(preallocate: str) -> None:
    fs = written(60, segment_bytes=2048, preallocate=preallocate)
    assert len(list_segments(fs, D)) > 2
    replayed: list[tuple[dict[str, object], int]] = []
    scan(fs, D, 0, lambda rec, lsn: replayed.append((rec, lsn)))
    got = read_all(fs)
    assert [(rec, start) for rec, start, _ in got] == replayed
    for name in list_segments(fs, D):  # within a segment, each record ends where the next starts
        spans = [(start, end) for _, start, end in F.records(fs.read_bytes(posixpath.join(D, name)))]
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(spans))


def test_records_stop_at_the_first_line_that_does_not_decode() -> None:
    fs = written(10)
    path = posixpath.join(D, list_segments(fs, D)[0])
    data = fs.read_bytes(path)
    lines = data.split(b"\n")
    lines[4] = lines[4][:12] + b"\xff" + lines[4][13:]  # record 4's body no longer decodes
    got = list(F.records(b"\n".join(lines)))
    assert [rec["seq"] for rec, _, _ in got] == [1, 2, 3]
    cut = data[: data.rfind(b"\n", 0, len(data) - 1) + 5]  # the last line cut short: not a record
    assert [rec["seq"] for rec, _, _ in F.records(cut)] == list(range(1, 10))
    crc_flipped = b"0" + data[1:]  # the header's CRC is not checked, only its body read
    assert len(list(F.records(crc_flipped))) == 10
    assert list(F.records(b"garbage\n" + data[data.find(b"\n") + 1 :])) == []
    assert list(F.records(data[: data.find(b"\n")])) == []


def test_paused_gc_restores_the_collector() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
    with pytest.raises(ValueError), paused_gc():
        raise ValueError
    assert gc.isenabled()


def test_unframe_trusts_the_framing_not_the_crc() -> None:
    body = b'{"seq":1}'
    line = F.frame(body, 12345)[:-1]  # a CRC that is wrong for any chain
    assert isinstance(F.parse_line(line, 0), str)
    assert F.unframe(line) == body
    assert F.unframe(line.replace(b" 9 ", b" 8 ")) is None  # the length field no longer holds
    assert F.unframe(b"zzzzzzzz 9 " + body) is None  # not a hex checksum


def test_claimed_salvages_what_a_damaged_line_still_says() -> None:
    body = b'{"seq":1}'
    line = F.frame(body, 0xDEADBEEF)[:-1]
    assert F.claimed(line) == (0xDEADBEEF, body)
    assert F.claimed(line.replace(b" 9 ", b" 7 ")) == (0xDEADBEEF, body)  # the length is not checked
    assert F.claimed(b"zzzzzzzz 9 " + body) == (None, body)  # not hex: no claimed CRC
    assert F.claimed(b"deadbee 9 " + body) == (None, body)  # 7 digits: no claimed CRC
    assert F.claimed(b"deadbeef 9") == (0xDEADBEEF, None)  # cut before its body
    assert F.claimed(b"\0\0\0") == (None, None)  # zeros of a lost block


def test_crc32c_is_the_packages_function_loaded_without_its_metadata_import() -> None:
    """log_format loads crc32c's extension alone (the package's __init__ imports importlib.metadata,
    20-30 ms a process): the same CRC as the package's, and a fresh interpreter that imports the
    log has not run that __init__."""
    assert F.crc32c(b"123456789") == 0xE3069283
    for data, value in ((b"", 0), (b"a line\n", 0), (bytes(range(256)) * 9, 0x1234ABCD)):
        assert F.crc32c(data, value) == crc32c(data, value)
    probe = "import sys, beaver_sim.storage.wal; print('crc32c' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_crc32c_falls_back_to_the_package_where_its_layout_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No extension where crc32c 2.x keeps it, or one that does not give the check value: the
    package's own import, the same function."""
    from importlib.machinery import PathFinder

    monkeypatch.setattr(PathFinder, "find_spec", classmethod(lambda cls, name, path=None, target=None: None))
    assert F._load_crc32c() is crc32c

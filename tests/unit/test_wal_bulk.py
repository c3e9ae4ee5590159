"""The scan checks lines in bulk (`wal._checked`, a chunk at a time) and falls back to its line loop
for a chunk with a bad line: the verdict, the figures, the records replayed with their LSNs and what
`known` keeps must be exactly those of the line loop alone, whatever the damage and wherever a
chunk starts or a replay is refused."""

from __future__ import annotations

import posixpath
import random
from dataclasses import asdict
from typing import Any

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.types import BeaverError
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage import wal as W

D = "/wal"


def log_files(n: int) -> dict[str, bytes]:
    """`n` records over a few segments (enqueues, dispatches, acks and fails, as a run writes)."""
    fs = SimFS()
    wal, _s, _d = W.WriteAheadLog.open(fs, D, segment_bytes=64 << 10)
    for i in range(n):
        job = f"job-{i}"
        kind = i % 4
        if kind == 0:
            wal.append(R.enqueue(job, {"n": i, "pad": "x" * (i % 7)}))
        elif kind == 1:
            wal.append(R.dispatch(job, 1, i % 3, 10.0 + i))
        elif kind == 2:
            wal.append(R.ack(job, 1, {"r": i}))
        else:
            wal.append(R.fail(job, 1, f"error {i}", 20.5 + i))
        wal.flush()
    wal.close()
    return {p: fs.read_bytes(p) for p in (posixpath.join(D, m) for m in W.list_segments(fs, D))}


def on_fs(files: dict[str, bytes]) -> SimFS:
    fs = SimFS()
    fs.makedirs(D)
    for path, data in files.items():
        f = fs.create(path)
        f.write(data)
        f.sync()
    return fs


def outcome(fs: SimFS, after_seq: int, refuse_at: int, known: W.Known | None) -> tuple[Any, ...]:
    """Everything a scan reports and does: its figures and problem, each (record, LSN) handed to
    the callback (which refuses seq `refuse_at`), and what it left in `known`."""
    got: list[Any] = []

    def on_record(rec: dict[str, Any], lsn: int) -> None:
        if rec["seq"] == refuse_at:
            raise BeaverError(f"refused {refuse_at}")
        got.append((rec, lsn))

    s = W.scan(fs, D, after_seq, on_record, known=known)
    kept = {p: (v.data, v.ends, v.crcs) for p, v in (known or {}).items()}
    return asdict(s), got, kept, asdict(W.scan(fs, D, after_seq))


def both(files: dict[str, bytes], after_seq: int, refuse_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with_known: W.Known = {}
    bulk = (
        outcome(on_fs(files), after_seq, refuse_at, None),
        outcome(on_fs(files), after_seq, refuse_at, with_known),
    )
    with monkeypatch.context() as m:
        m.setattr(W, "_checked", lambda chunk, crc, seq: None)  # every line through the line loop
        by_line = (
            outcome(on_fs(files), after_seq, refuse_at, None),
            outcome(on_fs(files), after_seq, refuse_at, {}),
        )
    assert bulk == by_line
    # and again with what the first scan verified: it skips the records it would not replay
    again = outcome(on_fs(files), after_seq, refuse_at, with_known)
    with monkeypatch.context() as m:
        m.setattr(W, "_checked", lambda chunk, crc, seq: None)
        assert again == outcome(on_fs(files), after_seq, refuse_at, dict(with_known))


FILES = log_files(2000)


def test_the_log_spans_chunks_and_segments() -> None:
    assert len(FILES) >= 3
    assert max(d.count(b"\n") for d in FILES.values()) > 2 * W._CHUNK


@pytest.mark.parametrize("after_seq", [0, 1, 255, 256, 257, 700, 2000])
@pytest.mark.parametrize("refuse_at", [0, 1, 256, 257, 513, 1500])
def test_a_whole_log_replays_as_line_by_line(
    after_seq: int, refuse_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    both(FILES, after_seq, refuse_at, monkeypatch)


@pytest.mark.parametrize("seed", range(40))
def test_damage_is_found_as_line_by_line(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One damage in one segment: a byte changed (to another digit, a space, a newline, a zero,
    anything), bytes cut from the end, or a line removed or doubled."""
    rng = random.Random(seed)
    files = dict(FILES)
    path = rng.choice(sorted(files))
    data = bytearray(files[path])
    how = rng.randrange(4)
    if how == 0:
        at = rng.randrange(len(data))
        data[at] = rng.choice(b"0123456789 \n\0x{}-+_")
    elif how == 1:
        del data[rng.randrange(len(data)) :]
    else:
        lines = bytes(data).split(b"\n")
        at = rng.randrange(1, len(lines) - 1)
        lines[at:at] = [lines[at]] if how == 2 else []
        if how == 3:
            del lines[at]
        data = bytearray(b"\n".join(lines))
    files[path] = bytes(data)
    both(files, rng.choice([0, 300, 900]), rng.choice([0, 200, 800]), monkeypatch)


@pytest.mark.parametrize(
    "line",
    [
        b"+0000001 2 {}",  # int() takes a sign: the CRC check refuses it
        b"0000_001 2 {}",
        b"00000000 02 {}",  # a length with a leading zero is still its length
        b"00000000  2 {}",
        b"00000000 2 {}x",
        b"00000000 2",
    ],
)
def test_odd_framing_is_judged_as_line_by_line(line: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line the bulk checks and the line loop could read differently, placed mid-chunk."""
    files = dict(FILES)
    path = sorted(files)[0]
    lines = files[path].split(b"\n")
    lines[100] = line
    files[path] = b"\n".join(lines)
    both(files, 0, 0, monkeypatch)


@pytest.mark.parametrize("change", ["drop a leading zero", "add a leading zero"])
def test_a_crc_of_the_wrong_width_is_refused_as_line_by_line(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same number in 7 or 9 hex digits: `int` reads it, only the width check refuses it."""
    files = dict(FILES)
    path = sorted(files)[0]
    lines = files[path].split(b"\n")
    at = next(i for i, line in enumerate(lines) if i > 300 and line.startswith(b"0"))
    lines[at] = lines[at][1:] if change == "drop a leading zero" else b"0" + lines[at]
    files[path] = b"\n".join(lines)
    both(files, 0, 0, monkeypatch)
    assert "checksum" not in W.scan(on_fs(files), D).problem.reason  # type: ignore[union-attr]

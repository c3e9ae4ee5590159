"""The durability order, checked on the system calls of real processes (`strace -f`): the
simulator proves the design on SimFS, this proves RealFS really makes the calls the design counts on.
- an enqueue is acknowledged (the reply on the control socket, or `beaver enqueue`'s stdout when it
  writes the log itself) only after the bytes of its records were written and fdatasync'ed;
- a WAL segment or snapshot is renamed into place only after its tmp file was synced, and its
  directory is fsynced after the rename;
- with `wal_preallocate: fallocate`, a WAL segment is fallocated before the sync that precedes its
  rename, so no record lands in space that a crash could take back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from beaver_sim.sim.trace import completed_calls
from tests.traced import feed_traced_controller

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("strace") is None, reason="strace is not installed (Debian package strace)"
    ),
]

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
CALLS = "write,pwrite64,fallocate,fdatasync,fsync,rename,renameat,renameat2,sendto"
FD = re.compile(r"^(\d+)<([^>]*)>")


@dataclass
class Call:
    name: str
    path: str  # the file or socket the fd names, or the rename's source
    args: str  # the whole argument text, strings escaped as strace prints them
    target: str = ""  # a rename's destination


def parse(trace: str) -> list[Call]:
    """The completed calls in the order they completed (an interrupted call counts at its end)."""
    calls: list[Call] = []
    for _number, name, args, _result in completed_calls(trace):
        if name.startswith("rename"):
            names = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
            calls.append(Call("rename", names[0], args, names[1]))
        elif fd := FD.match(args):
            calls.append(Call(name, fd.group(2), args))
    return calls


def strace(out: Path, argv: list[str]) -> list[str]:
    return ["strace", "-f", "-yy", "-s", "1000000", "-e", f"trace={CALLS}", "-o", str(out), *argv]


def synced_after(calls: list[Call], path: str, start: int, end: int) -> bool:
    return any(c.name in ("fdatasync", "fsync") and c.path == path for c in calls[start:end])


def written(calls: list[Call], job: str, upto: int) -> int:
    """Index of the WAL write that holds `job`'s ENQUEUE record (before `upto`)."""
    needle = f'\\"type\\":\\"enqueue\\",\\"job\\":\\"{job}\\"'
    hits = [
        i
        for i, c in enumerate(calls[:upto])
        if c.name == "write" and "/wal/wal-" in c.path and needle in c.args
    ]
    assert hits, f"no WAL write of job {job} before the acknowledgement"
    return hits[-1]


def check_acknowledged_after_sync(
    calls: list[Call], batches: list[list[str]], is_ack: re.Pattern[str]
) -> None:
    acks = [i for i, c in enumerate(calls) if is_ack.search(c.args) and c.name in ("sendto", "write")]
    assert len(acks) == len(batches), f"{len(acks)} acknowledgements for {len(batches)} batches"
    for ack, batch in zip(acks, batches, strict=True):
        last = max(written(calls, job, ack) for job in batch)
        assert synced_after(calls, calls[last].path, last + 1, ack), (
            f"batch {batch[0]}… acked before fdatasync"
        )


def check_renames(calls: list[Call]) -> int:
    renames = [i for i, c in enumerate(calls) if c.name == "rename" and c.path.endswith(".tmp")]
    for i in renames:
        src, dst = calls[i].path, calls[i].target
        writes = [j for j, c in enumerate(calls[:i]) if c.name == "write" and c.path == src]
        assert writes, f"{src}: renamed without a write"
        assert synced_after(calls, src, writes[-1] + 1, i), f"{src} renamed before it was synced"
        later = calls[i + 1 :]
        assert any(c.name == "fsync" and c.path == os.path.dirname(dst) for c in later), (
            f"{os.path.dirname(dst)} not fsynced after renaming {dst}"
        )
    return len(renames)


def job_file(path: Path, ids: list[str]) -> Path:
    path.write_bytes(orjson.dumps([{"id": i, "payload": {"type": "noop"}} for i in ids]))
    return path


@pytest.mark.parametrize("prealloc", ["none", "fallocate"])
def test_a_running_controller_acknowledges_only_synced_records_and_renames_only_synced_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prealloc: str
) -> None:
    monkeypatch.setenv("BEAVER_SEGMENT_BYTES", "4096")  # several rotations
    monkeypatch.setenv("BEAVER_WAL_PREALLOCATE", prealloc)
    data = str(tmp_path / "d")
    trace = tmp_path / "run.trace"
    batches = [[f"b{b}-{i}" for i in range(5 + 3 * b)] for b in range(8)]
    files = [job_file(tmp_path / f"{b}.json", batch) for b, batch in enumerate(batches)]
    feed_traced_controller(strace(trace, []), data, files, pause=0.06)
    calls = parse(trace.read_text(errors="replace"))
    check_acknowledged_after_sync(calls, batches, re.compile(r'\{\\"ok\\":true,\\"enqueued\\"'))
    renamed = check_renames(calls)
    snapshots = [c for c in calls if c.name == "rename" and "/snap/" in c.target]
    segments = [c for c in calls if c.name == "rename" and "/wal/" in c.target]
    assert snapshots and len(segments) >= 2 and renamed == len(snapshots) + len(segments)
    if prealloc != "none":
        for c in segments:
            i = calls.index(c)
            grown = [j for j, x in enumerate(calls[:i]) if x.name == "fallocate" and x.path == c.path]
            assert grown and synced_after(calls, c.path, grown[-1] + 1, i), f"{c.path}: not preallocated"


def test_beaver_enqueue_writing_the_log_itself_prints_durable_only_after_fdatasync(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    batches = [[f"x{i}" for i in range(30)], [f"y{i}" for i in range(4)]]
    for b, batch in enumerate(batches):
        trace = tmp_path / f"enqueue{b}.trace"
        argv = [
            *BEAVER,
            "enqueue",
            "--create",
            "--data-dir",
            data,
            "--file",
            str(job_file(tmp_path / f"{b}.json", batch)),
        ]
        out = subprocess.run(strace(trace, argv), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "written directly" in out.stdout, out.stderr
        calls = parse(trace.read_text(errors="replace"))
        check_acknowledged_after_sync(calls, [batch], re.compile(r"enqueued \d+ jobs"))
        assert check_renames(calls) == (1 if b == 0 else 0)  # the first segment is created once

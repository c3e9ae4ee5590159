"""Arbitrary bytes into every reader of outside input: the WAL reader, the snapshot loader, the
job-file parser, the config loader and the control socket. Each input parses or yields our own
one-line error naming the file (or request); never a traceback from deep inside, never a hang,
and the readers never write."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beaver_sim.cli import read_jobs
from beaver_sim.config import load_config
from beaver_sim.core import records as R
from beaver_sim.core.codec import decode_snapshot, encode_snapshot, read_state
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import inspect, plan_repair
from beaver_sim.core.types import BeaverError
from beaver_sim.runtime import server
from beaver_sim.runtime.service import Service
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.log_format import segment_name
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import scan

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SEGMENT = "/data/wal/" + segment_name(1)


def one_line(e: BaseException, *names: str) -> None:
    text = str(e)
    assert "\n" not in text and text, repr(text)
    assert any(n in text for n in names), (names, text)


def valid_log() -> bytes:
    fs = SimFS()
    s = Storage.open(fs, "/data")
    for job in ("a", "b"):
        s.append(R.enqueue(job, {"n": 1}))
    s.append(R.dispatch("a", 1, 0, 1.0))
    s.close()
    return fs.read_bytes(SEGMENT)


VALID = valid_log()


def mangled(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with bytes flipped, cut, inserted: most inputs then get past the first check."""
    return st.one_of(
        st.binary(max_size=300),
        st.builds(lambda cut, junk: data[:cut] + junk, st.integers(0, len(data)), st.binary(max_size=40)),
        st.builds(
            lambda at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
            st.integers(0, len(data) - 1),
            st.integers(0, 255),
        ),
    )


class WatchedFS(SimFS):
    """Counts every call that would change a file."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []
        self.hook = lambda op, path, n: self.changes.append(f"{op} {path}") if op != "mark" else None


@FUZZ
@given(mangled(VALID))
def test_the_wal_reader_reports_any_bytes_as_a_problem_and_writes_nothing(data: bytes) -> None:
    fs = WatchedFS()
    fs.hook = None
    fs.makedirs("/data/wal")
    f = fs.create(SEGMENT)
    f.write(data)
    f.sync()
    f.close()
    fs.hook = lambda op, path, n: fs.changes.append(f"{op} {path}") if op != "mark" else None
    s = scan(fs, "/data/wal")
    if s.problem is not None:
        assert "\n" not in str(s.problem) and SEGMENT in str(s.problem)
    found = inspect(fs, "/data/wal", "/data/snap")
    plan_repair(fs, "/data/wal", "/data/snap")
    assert found.ok == (s.problem is None or s.problem.torn)
    assert fs.changes == []
    fs.hook = None
    try:  # recovery either starts or refuses in one line naming the segment
        Storage.open(fs, "/data").close()
    except BeaverError as e:
        one_line(e, SEGMENT, "/data/wal")


VALID_SNAPSHOT = encode_snapshot(Storage.open(SimFS(), "/d").state)


@FUZZ
@given(mangled(VALID_SNAPSHOT))
def test_the_snapshot_loader_reports_any_bytes_in_one_line(data: bytes) -> None:
    try:
        decode_snapshot(data, "/data/snap/x.json")
    except BeaverError as e:
        one_line(e, "/data/snap/x.json")
    fs = SimFS()
    store = SnapshotStore(fs, "/data/snap")
    f = fs.create("/data/snap/snap-00000000000000000001.json")
    f.write(data)
    f.close()
    try:
        store.load(read_state)  # a damaged snapshot is set aside, never a crash
    except BeaverError as e:
        one_line(e, "/data/snap")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "payload", "x"]), inner)
    ),
    max_leaves=8,
)


@FUZZ
@given(st.one_of(st.binary(max_size=200), JSONISH.map(orjson.dumps)))
def test_the_job_file_parser_accepts_or_names_the_file(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("jobs") / "jobs.json"
    path.write_bytes(data)
    try:
        jobs = read_jobs(str(path))
    except BeaverError as e:
        one_line(e, str(path))
        return
    assert all(isinstance(i, str) and i and isinstance(p, dict) for i, p in jobs)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(st.text(max_size=12), JSONISH, max_size=4).map(lambda d: orjson.dumps(d)),
        st.sampled_from(
            [b"worker_count: -1", b"fsync: sometimes", b"task_timeout: 3 parsecs", b"[1, 2", b"a: *x"]
        ),
    )
)
def test_the_config_loader_accepts_or_names_the_file(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "beaver.yaml"
    path.write_bytes(data)
    try:
        load_config(str(path), {})
    except BeaverError as e:
        one_line(e, str(path))


def test_the_control_socket_answers_garbage_and_is_not_stalled_by_a_silent_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "READ_TIMEOUT", 0.5)
    from beaver_sim.core.types import Config

    config = Config(data_dir=str(tmp_path / "d"), metrics_port=0, work_min=0.0, work_max=0.01)
    inputs = [b"", b"\xff\xfe", b"[]", b"null", b'{"op": 1}', b'{"op": "enqueue", "jobs": "x"}']
    inputs += [b'{"op": "enqueue", "jobs": [[1, {}]]}', b'{"op": "enqueue", "jobs": [["a", 3]]}']
    inputs += [b'{"op": "enqueue", "jobs": [["a", {"n": 1e400}]]}', b'{"op": "status"' * 3]

    def ask(data: bytes, finish: bool = True) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(os.path.join(config.data_dir, "beaver.sock"))
            s.sendall(data)
            if finish:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        return orjson.loads(b"".join(chunks))

    async def go() -> None:
        service = Service(config, serve_metrics=False)
        await service.start()
        try:
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connects, never sends
            silent.connect(os.path.join(config.data_dir, "beaver.sock"))
            for data in inputs:
                answer = await asyncio.to_thread(ask, data)
                assert answer["ok"] is False and "\n" not in answer["error"], (data, answer)
            unfinished = await asyncio.to_thread(ask, b'{"op": "status"}', False)  # never shuts down
            assert unfinished["ok"] is False and "incomplete" in unfinished["error"]
            status = await asyncio.to_thread(ask, b'{"op": "status"}')
            assert status["ok"] and status["status"]["jobs"] == 0  # the controller went on meanwhile
            silent.close()
        finally:
            await service.close()

    asyncio.run(go())

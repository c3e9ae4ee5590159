"""SnapshotStore: atomic durable snapshots, the two newest kept, a damaged newest set aside, and the
WAL compacted only as far as the oldest kept snapshot covers it."""

from __future__ import annotations

import posixpath
from pathlib import Path

import orjson
import pytest
from crc32c import crc32c

from beaver_sim.core import codec
from beaver_sim.core import records as R
from beaver_sim.core.codec import SCHEMA_VERSION, decode_snapshot, encode_snapshot, read_state, state_body
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, CorruptLog, Lease
from beaver_sim.sim.fs import POWER_LOSS, SimFS
from beaver_sim.storage.fs import FS, RealFS
from beaver_sim.storage.snapshot import SnapshotStore, encode, snapshot_name
from beaver_sim.storage.wal import list_segments
from tests.denied import DeniedRealFS

S = "/data/snap"


def state(n_jobs: int, last_seq: int) -> JobQueue:
    """A queue with jobs in every state, at `last_seq`."""
    q = JobQueue()
    for i in range(n_jobs):
        q.enqueue(f"j{i}", {"i": i, "text": 'ünïcode\n"quoted"'})
    for i in range(min(n_jobs, 4)):
        q.dispatch(f"j{i}", Lease(1, i, 10.0 + i))
    if n_jobs >= 4:
        q.complete("j0", 1)
        q.kill("j1", 1)
        q.requeue("j2", 1)
    q.last_seq = last_seq
    return q


def body_of(q: JobQueue) -> tuple[int, int, bytes]:
    """SnapshotStore.save's arguments for the state of `q`, as Storage.checkpoint passes them."""
    return q.last_seq, SCHEMA_VERSION, state_body(q)


def store(fs: FS | None = None, d: str = S) -> SnapshotStore:
    return SnapshotStore(fs or SimFS(), d)


both = pytest.mark.parametrize("kind", ["RealFS", "SimFS"])


def fs_dir(kind: str, tmp_path: Path) -> tuple[FS, str]:
    return (RealFS(), str(tmp_path / "snap")) if kind == "RealFS" else (SimFS(), S)


@both
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    st = SnapshotStore(fs, d)
    q = state(6, 17)
    path = st.save(*body_of(q))
    assert path == posixpath.join(d, snapshot_name(17)) == posixpath.join(d, "snap-00000000000000000017.json")
    assert fs.listdir(d) == [snapshot_name(17)]
    loaded = SnapshotStore(fs, d).load(read_state)
    assert loaded.path == path and loaded.seq == 17 and loaded.broken == []
    assert loaded.size == fs.size(path)
    assert loaded.state.to_state() == q.to_state()
    loaded.state.validate()


def test_the_file_is_a_checked_header_and_a_body() -> None:
    data = encode_snapshot(state(5, 9))
    header_line, body, end = data.split(b"\n")
    assert end == b""
    header = orjson.loads(header_line)
    assert header["magic"] == "beaver-snap" and header["v"] == SCHEMA_VERSION
    assert header["last_included_seq"] == 9
    assert header["body_len"] == len(body) and header["body_crc32c"] == crc32c(body)
    assert orjson.loads(body) == codec.to_columns(state(5, 9))  # payloads of jobs in every state


def test_payloads_stay_json_text_until_read() -> None:
    """Schema 2 keeps each payload as the JSON text it stored: a recovery of a million jobs builds
    no payload dict until a job is dispatched (or compared)."""
    q = decode_snapshot(encode_snapshot(state(5, 9)), "/x")
    job = q.jobs["j4"]
    assert job.raw == '{"i":4,"text":"ünïcode\\n\\"quoted\\""}'
    assert job.payload == {"i": 4, "text": 'ünïcode\n"quoted"'} and job.raw is job.payload
    assert encode_snapshot(q) == encode_snapshot(state(5, 9))  # text or dict: the same bytes


def test_a_payload_is_encoded_by_the_first_snapshot_only() -> None:
    """Each job keeps the payload text its first snapshot wrote (or the text it was decoded from),
    and later snapshots write that text: the same bytes, without encoding the payload again."""
    q = state(5, 9)
    assert all(job.text is None for job in q.jobs.values())
    first = state_body(q)
    assert [job.text for job in q.jobs.values()] == [
        orjson.dumps(job.raw).decode() for job in q.jobs.values()
    ]
    q.jobs["j3"].text = '{"i":3,"text":"kept"}'  # what a later snapshot writes for j3: its text, not its dict
    assert orjson.loads(state_body(q))["payloads"][3] == '{"i":3,"text":"kept"}'
    q.jobs["j3"].text = None
    assert state_body(q) == first
    loaded = decode_snapshot(encode_snapshot(q), "/x").jobs["j4"]
    assert loaded.payload == {"i": 4, "text": 'ünïcode\n"quoted"'}
    assert loaded.text == '{"i":4,"text":"ünïcode\\n\\"quoted\\""}'  # decoded, its text kept
    q.jobs["j4"].text = None
    assert loaded == q.jobs["j4"]  # the text is a cache: jobs compare without it


@both
def test_a_v1_snapshot_still_loads_and_the_next_checkpoint_writes_the_new_one(
    kind: str, tmp_path: Path
) -> None:
    """Data directories written before schema 2 open as they are (their snapshot body is
    `to_state()`, one list per job); the next snapshot is the current schema."""
    fs, d = fs_dir(kind, tmp_path)
    data = posixpath.dirname(d)
    s = Storage.open(fs, data)
    for i in range(6):
        s.append(R.enqueue(f"j{i}", {"i": i}))
    s.append(R.dispatch("j0", 1, 0, 3.0))
    s.append(R.ack("j0", 1))
    s.checkpoint()
    old = encode(8, 1, orjson.dumps(s.state.to_state()))  # the same state in the v1 body
    s.append(R.enqueue("after", {}))
    s.close()
    live = s.state.to_state()
    path = posixpath.join(d, snapshot_name(8))
    f = fs.create(path)  # the snapshot as the previous version wrote it
    f.write(old)
    f.sync()
    f.close()
    s = Storage.open(fs, data)
    assert s.report.snapshot == path and s.report.records_replayed == 1
    assert s.state.to_state() == live
    s.checkpoint()
    newest = SnapshotStore(fs, d).load(read_state)
    assert orjson.loads(fs.read_bytes(newest.path).split(b"\n")[0])["v"] == SCHEMA_VERSION == 3
    assert newest.state.to_state() == live
    s.close()


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c | {"status": c["status"][:-1]},
        lambda c: c | {"payloads": [{"i": 0}, *c["payloads"][1:]]},
        lambda c: c | {"ids": [c["ids"][0], *c["ids"][:-1]]},
        lambda c: c | {"status": "z" + c["status"][1:]},
    ],
    ids=["short-column", "payload-not-text", "duplicate-id", "unknown-state"],
)
def test_a_v2_body_that_is_not_a_state_is_corrupt(edit) -> None:
    body = orjson.dumps(edit(codec.to_columns(state(5, 9))))
    with pytest.raises(CorruptLog, match="not a valid state"):
        decode_snapshot(encode(9, 2, body), "/x/snap-9.json")


def test_an_empty_store_loads_nothing() -> None:
    loaded = store().load(read_state)
    assert loaded.path is None and loaded.seq == 0 and loaded.broken == [] and loaded.state is None


def test_save_is_durable_with_tmp_fsync_rename_and_directory_fsync() -> None:
    fs = SimFS()
    st = store(fs)
    ops: list[tuple[str, str]] = []
    fs.hook = lambda op, path, n: ops.append((op, path))
    st.save(*body_of(state(3, 5)))
    path = posixpath.join(S, snapshot_name(5))
    assert ops == [
        ("create", path + ".tmp"),
        ("write", path + ".tmp"),
        ("mark", "snapshot-tmp-written"),
        ("sync", path + ".tmp"),
        ("mark", "snapshot-tmp-synced"),
        ("replace", path),
        ("mark", "snapshot-renamed"),
        ("sync_dir", S),
        ("mark", "snapshot-dir-synced"),
    ]
    assert fs.after_crash(POWER_LOSS).read_bytes(path) == encode_snapshot(state(3, 5))


def test_keep_the_two_newest() -> None:
    fs = SimFS()
    st = store(fs)
    st.save(*body_of(state(1, 3)))
    assert st.prune() == 0  # one snapshot: no fallback yet, so the WAL must stay whole
    for seq in (7, 12, 20):
        st.save(*body_of(state(2, seq)))
    assert st.seqs() == [3, 7, 12, 20]
    assert st.prune() == 12  # the oldest kept snapshot: the WAL may go through seq 12
    assert st.seqs() == [12, 20]
    assert fs.listdir(S) == [snapshot_name(12), snapshot_name(20)]
    assert st.prune() == 12
    assert st.load(read_state).seq == 20


def test_keep_is_configurable() -> None:
    fs = SimFS()
    st = SnapshotStore(fs, S, keep=3)
    for seq in (1, 2, 3, 4):
        st.save(*body_of(state(1, seq)))
    assert st.prune() == 2 and st.seqs() == [2, 3, 4]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # torn: the body cut short
        lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:],  # a flipped bit in the body
        lambda b: b"",  # empty
        lambda b: b"not json\n" + b,  # bad header
        lambda b: b.replace(b"\n", b" ", 1),  # one line only
    ],
    ids=["torn", "flipped", "empty", "bad-header", "no-newline"],
)
def test_a_damaged_newest_is_set_aside_and_the_older_used(damage) -> None:
    fs = SimFS()
    st = store(fs)
    st.save(*body_of(state(4, 10)))
    newest = st.save(*body_of(state(6, 20)))
    bad = damage(fs.read_bytes(newest))
    f = fs.create(newest)
    f.write(bad)
    loaded = SnapshotStore(fs, S).load(read_state)
    assert loaded.seq == 10 and loaded.state.to_state() == state(4, 10).to_state()
    assert loaded.broken == [newest]
    assert fs.read_bytes(newest + ".broken") == bad  # kept for humans
    assert fs.listdir(S) == [snapshot_name(10), snapshot_name(20) + ".broken"]
    assert st.seqs() == [10]


def test_every_snapshot_damaged_gives_an_empty_state() -> None:
    fs = SimFS()
    st = store(fs)
    paths = [st.save(*body_of(state(2, seq))) for seq in (1, 2)]
    for p in paths:
        fs.create(p).write(b"garbage")
    loaded = st.load(read_state)
    assert loaded.seq == 0 and loaded.path is None and loaded.broken == paths[::-1]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h, b: (h, b.replace(b'"last_seq":9', b'"last_seq":8')), "fails its checksum"),
        (lambda h, b: ({**h, "last_included_seq": 8}, b), "body seq 9 differs from header"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "body_len"}, b), "fails its checksum"),
        (lambda h, b: ({**h, "magic": "other"}, b), "not a beaver snapshot"),
        (
            lambda h, b: (
                {**h, "body_len": 2, "body_crc32c": crc32c(b"{}")},
                b"{}",
            ),
            "not a valid state",
        ),
    ],
    ids=["body-edited", "header-seq", "header-missing-len", "magic", "body-not-a-state"],
)
def test_decode_refuses_damage_with_corrupt_log(edit, match: str) -> None:
    data = encode_snapshot(state(4, 9))
    h_line, body, _ = data.split(b"\n")
    header, body = edit(orjson.loads(h_line), body)
    with pytest.raises(CorruptLog, match=rf"^/x/snap-9\.json: .*{match}"):
        decode_snapshot(orjson.dumps(header) + b"\n" + body + b"\n", "/x/snap-9.json")


@both
def test_a_wrong_schema_version_names_the_file_and_is_not_set_aside(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    st = SnapshotStore(fs, d)
    path = st.save(*body_of(state(2, 4)))
    h_line, body, _ = fs.read_bytes(path).split(b"\n")
    header = {**orjson.loads(h_line), "v": SCHEMA_VERSION + 1}
    f = fs.create(path)
    f.write(orjson.dumps(header) + b"\n" + body + b"\n")
    f.close()
    with pytest.raises(BeaverError) as excinfo:
        st.load(read_state)
    assert not isinstance(excinfo.value, CorruptLog)  # a newer writer, not damage
    msg = str(excinfo.value)
    assert msg.startswith(f"{path}: snapshot schema version {SCHEMA_VERSION + 1} is not supported")
    assert fs.exists(path) and not fs.exists(path + ".broken")  # nothing renamed or written


def test_leftover_tmp_files_are_removed() -> None:
    fs = SimFS()
    fs.makedirs(S)
    fs.create(posixpath.join(S, snapshot_name(5) + ".tmp")).write(b"half")
    st = store(fs)
    assert fs.listdir(S) == [] and st.load(read_state).seq == 0


def test_other_files_are_ignored() -> None:
    fs = SimFS()
    st = store(fs)
    st.save(*body_of(state(1, 3)))
    fs.create(posixpath.join(S, "README")).write(b"x")
    fs.create(posixpath.join(S, "snap-3.json")).write(b"x")  # not 20 digits
    assert st.seqs() == [3] and st.load(read_state).seq == 3


@both
def test_a_snapshot_directory_that_is_a_file_is_refused(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    fs.makedirs(posixpath.dirname(d))
    fs.create(d).close()
    with pytest.raises(BeaverError, match=f"^{d}: snapshot directory is a file$"):
        SnapshotStore(fs, d)
    assert fs.read_bytes(d) == b""


@both
def test_a_data_directory_that_is_a_file_is_refused(kind: str, tmp_path: Path) -> None:
    fs = RealFS() if kind == "RealFS" else SimFS()
    data_dir = str(tmp_path / "data") if kind == "RealFS" else "/data"
    fs.makedirs(posixpath.dirname(data_dir))
    fs.create(data_dir).close()
    with pytest.raises(BeaverError, match=f"^{data_dir}: data directory is a file$"):
        Storage.open(fs, data_dir)
    assert fs.read_bytes(data_dir) == b"" and not fs.is_dir(data_dir)


def test_an_unreadable_snapshot_names_the_file(tmp_path: Path) -> None:
    d = str(tmp_path / "snap")
    path = SnapshotStore(RealFS(), d).save(*body_of(state(2, 4)))
    with pytest.raises(PermissionError) as excinfo:
        SnapshotStore(DeniedRealFS(path), d).load(read_state)
    assert path in str(excinfo.value)


def test_an_unreadable_data_directory_names_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Storage.open(RealFS(), str(data)).close()
    with pytest.raises(PermissionError) as excinfo:
        Storage.open(DeniedRealFS(str(data / "snap")), str(data))
    assert str(data / "snap") in str(excinfo.value)


class DeniedFS(SimFS):
    """SimFS where reading `denied` fails as chmod 000 would (runs as root too)."""

    denied = ""

    def read_bytes(self, path: str) -> bytes:
        if path == self.denied:
            raise PermissionError(13, "Permission denied", path)
        return super().read_bytes(path)


def test_a_permission_error_names_the_file_and_changes_nothing() -> None:
    fs = DeniedFS()
    st = store(fs)
    path = st.save(*body_of(state(2, 4)))
    fs.denied = path
    with pytest.raises(PermissionError, match=rf"Permission denied: '{path}'"):
        SnapshotStore(fs, S).load(read_state)
    assert fs.listdir(S) == [snapshot_name(4)]  # not mistaken for damage and renamed


# -- WAL compaction follows the oldest kept snapshot ----------------------------------------------


def test_wal_segments_are_deleted_only_when_the_oldest_kept_snapshot_covers_them() -> None:
    fs = SimFS()
    s = Storage.open(fs, "/data", segment_bytes=1 << 30)
    taken: list[int] = []
    for round_ in range(5):
        for i in range(3):
            job = f"r{round_}-{i}"
            s.append(R.enqueue(job, {"i": i}))
            s.append(R.dispatch(job, 1, 0, 1.0))
            s.append(R.ack(job, 1))
        s.wal.flush()
        taken.append(s.checkpoint())
        kept = s.snapshots.seqs()
        assert kept == taken[-2:]
        segs = [int(n[4:24]) for n in list_segments(fs, "/data/wal")]
        oldest_needed = kept[0] + 1 if len(kept) == 2 else 1
        # the first remaining segment holds the first record the oldest kept snapshot needs
        assert segs[0] <= oldest_needed
        # and every deleted segment was wholly covered by the oldest kept snapshot
        assert segs[0] == (1 if len(kept) < 2 else oldest_needed)
        # either kept snapshot can be the base of a recovery: the WAL after each is still whole
        for seq in kept:
            crashed = fs.after_crash(POWER_LOSS)
            for other in kept:
                if other != seq:
                    crashed.remove(posixpath.join(S, snapshot_name(other)))
            s2 = Storage.open(crashed, "/data")
            assert s2.report.snapshot_seq == seq
            assert s2.state.to_state() == s.state.to_state()
    # with the newest damaged, recovery falls back to the older one and its WAL is still there
    newest = posixpath.join(S, snapshot_name(taken[-1]))
    crashed = fs.after_crash(POWER_LOSS)
    crashed.create(newest).write(b"damaged")
    s3 = Storage.open(crashed, "/data")
    assert s3.report.snapshot_seq == taken[-2] and s3.report.broken_snapshots == [newest]
    assert s3.state.to_state() == s.state.to_state()

"""The FS contract, run against RealFS (in tmp_path) and SimFS alike, so the simulator cannot drift
from the real file system (huey's storage contract tests); then what only SimFS does: crash models
and crash points."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from beaver_sim.core import records as R
from beaver_sim.sim.fs import (
    BLOCK,
    CRASH_MODELS,
    METADATA_FIRST,
    POWER_LOSS,
    PROCESS,
    SUBSETS,
    TORN_BLOCKS,
    SimFS,
    SimulatedCrash,
)
from beaver_sim.storage.fs import FS, RealFS
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import WriteAheadLog


@dataclass
class Env:
    fs: FS
    root: str

    def p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def write(self, name: str, data: bytes) -> str:
        path = self.p(name)
        f = self.fs.create(path)
        f.write(data)
        f.close()
        return path


@pytest.fixture(params=["RealFS", "SimFS"])
def env(request: pytest.FixtureRequest, tmp_path) -> Iterator[Env]:
    if request.param == "RealFS":
        yield Env(RealFS(), str(tmp_path))
    else:
        fs = SimFS()
        fs.makedirs("/data")
        yield Env(fs, "/data")


class TestFSContract:
    def test_create_write_read(self, env: Env) -> None:
        path = env.write("a", b"hello\n")
        assert env.fs.read_bytes(path) == b"hello\n"
        assert env.fs.size(path) == 6
        assert env.fs.exists(path) and not env.fs.is_dir(path)

    def test_create_truncates_an_existing_file(self, env: Env) -> None:
        path = env.write("a", b"a long first version")
        env.write("a", b"short")
        assert env.fs.read_bytes(path) == b"short"

    def test_writes_are_whole_and_in_order(self, env: Env) -> None:
        path = env.p("big")
        f = env.fs.create(path)
        chunks = [bytes([i]) * (100_000 + i) for i in range(5)]
        for c in chunks:
            f.write(c)
        f.sync()
        f.close()
        assert env.fs.read_bytes(path) == b"".join(chunks)

    def test_open_append_creates_then_appends(self, env: Env) -> None:
        path = env.p("log")
        assert not env.fs.exists(path)
        f = env.fs.open_append(path)
        f.write(b"one\n")
        f.sync()
        f.close()
        g = env.fs.open_append(path)
        g.write(b"two\n")
        g.write(b"three\n")
        g.close()
        assert env.fs.read_bytes(path) == b"one\ntwo\nthree\n"

    def test_empty_file(self, env: Env) -> None:
        path = env.p("empty")
        env.fs.create(path).close()
        assert env.fs.read_bytes(path) == b"" and env.fs.size(path) == 0

    def test_replace_moves_and_overwrites(self, env: Env) -> None:
        src = env.write("new.tmp", b"new")
        dst = env.write("cur", b"old")
        env.fs.replace(src, dst)
        assert env.fs.read_bytes(dst) == b"new"
        assert not env.fs.exists(src)
        env.fs.sync_dir(env.root)
        assert env.fs.listdir(env.root) == ["cur"]

    def test_an_open_handle_follows_its_file_through_a_rename(self, env: Env) -> None:
        src = env.p("x.tmp")
        f = env.fs.create(src)
        f.write(b"head\n")
        env.fs.replace(src, env.p("x"))
        f.write(b"more\n")
        f.close()
        assert env.fs.read_bytes(env.p("x")) == b"head\nmore\n"

    def test_remove(self, env: Env) -> None:
        path = env.write("a", b"x")
        env.fs.remove(path)
        assert not env.fs.exists(path)
        assert env.fs.listdir(env.root) == []

    def test_truncate(self, env: Env) -> None:
        path = env.write("a", b"0123456789")
        env.fs.truncate(path, 4)
        assert env.fs.read_bytes(path) == b"0123"
        assert env.fs.size(path) == 4
        f = env.fs.open_append(path)
        f.write(b"ab")
        f.close()
        assert env.fs.read_bytes(path) == b"0123ab"  # appends go to the new end
        env.fs.truncate(path, 0)
        assert env.fs.read_bytes(path) == b""

    def test_listdir_is_sorted_and_includes_directories(self, env: Env) -> None:
        for name in ["b", "wal-10.log", "a", "wal-02.log", "C"]:
            env.write(name, b"")
        env.fs.makedirs(env.p("sub"))
        env.write("sub/inner", b"")
        assert env.fs.listdir(env.root) == ["C", "a", "b", "sub", "wal-02.log", "wal-10.log"]
        assert env.fs.listdir(env.p("sub")) == ["inner"]

    def test_makedirs_nested_and_idempotent(self, env: Env) -> None:
        deep = env.p("x", "y", "z")
        env.fs.makedirs(deep)
        env.fs.makedirs(deep)
        assert env.fs.is_dir(env.p("x")) and env.fs.is_dir(env.p("x", "y")) and env.fs.is_dir(deep)
        assert env.fs.exists(deep)
        assert env.fs.listdir(deep) == []
        env.write("x/y/z/f", b"1")
        assert env.fs.read_bytes(posixpath.join(deep, "f")) == b"1"

    def test_makedirs_over_a_file_fails(self, env: Env) -> None:
        path = env.write("f", b"")
        with pytest.raises(FileExistsError):
            env.fs.makedirs(path)
        with pytest.raises(FileExistsError):
            env.fs.makedirs(posixpath.join(path, "sub"))
        assert not env.fs.is_dir(path) and env.fs.read_bytes(path) == b""

    def test_exists_and_is_dir(self, env: Env) -> None:
        assert env.fs.exists(env.root) and env.fs.is_dir(env.root)
        assert not env.fs.exists(env.p("nope")) and not env.fs.is_dir(env.p("nope"))

    @pytest.mark.parametrize(
        "call",
        [
            lambda fs, p: fs.read_bytes(p),
            lambda fs, p: fs.size(p),
            lambda fs, p: fs.remove(p),
            lambda fs, p: fs.truncate(p, 0),
            lambda fs, p: fs.replace(p, p + ".2"),
            lambda fs, p: fs.listdir(p),
            lambda fs, p: fs.open_append(posixpath.join(p, "f")),
            lambda fs, p: fs.create(posixpath.join(p, "f")),
        ],
        ids=["read_bytes", "size", "remove", "truncate", "replace", "listdir", "open_append", "create"],
    )
    def test_missing_files_raise_file_not_found(self, env: Env, call) -> None:
        with pytest.raises(FileNotFoundError):
            call(env.fs, env.p("missing"))

    def test_sync_and_sync_dir_succeed(self, env: Env) -> None:
        f = env.fs.create(env.p("a"))
        f.write(b"x")
        f.sync()
        f.sync()  # nothing new: still fine
        f.close()
        env.fs.sync_dir(env.root)
        assert env.fs.read_bytes(env.p("a")) == b"x"


# -- SimFS only: what a crash keeps ---------------------------------------------------------------


def sim() -> SimFS:
    fs = SimFS()
    fs.makedirs("/d")
    return fs


def written(fs: SimFS, path: str, data: bytes, *, sync: bool = False) -> None:
    f = fs.open_append(path)
    f.write(data)
    if sync:
        f.sync()
    f.close()


def test_process_crash_keeps_every_written_byte_and_name() -> None:
    fs = sim()
    written(fs, "/d/synced", b"durable", sync=True)
    written(fs, "/d/synced", b"+cache")
    written(fs, "/d/unsynced", b"page cache only")
    written(fs, "/d/moved.tmp", b"m", sync=True)
    fs.replace("/d/moved.tmp", "/d/moved")  # no directory sync
    after = fs.after_crash(PROCESS)
    assert after.snapshot_files() == {
        "/d/moved": b"m",
        "/d/synced": b"durable+cache",
        "/d/unsynced": b"page cache only",
    }


def test_power_loss_keeps_only_synced_bytes_and_durable_names() -> None:
    fs = sim()
    written(fs, "/d/a", b"synced", sync=True)
    fs.sync_dir("/d")
    written(fs, "/d/a", b" lost")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/a": b"synced"}


def test_power_loss_drops_an_unsynced_create() -> None:
    fs = sim()
    written(fs, "/d/new", b"synced data, but the name is not", sync=True)
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {}
    fs.sync_dir("/d")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/new": b"synced data, but the name is not"}


def test_power_loss_undoes_an_unsynced_rename() -> None:
    fs = sim()
    written(fs, "/d/snap", b"old", sync=True)
    written(fs, "/d/snap.tmp", b"new", sync=True)
    fs.sync_dir("/d")
    fs.replace("/d/snap.tmp", "/d/snap")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/snap": b"old", "/d/snap.tmp": b"new"}
    assert fs.after_crash(PROCESS).snapshot_files() == {"/d/snap": b"new"}
    fs.sync_dir("/d")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/snap": b"new"}


def test_power_loss_undoes_an_unsynced_remove() -> None:
    fs = sim()
    written(fs, "/d/seg", b"x", sync=True)
    fs.sync_dir("/d")
    fs.remove("/d/seg")
    assert fs.after_crash(PROCESS).snapshot_files() == {}
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/seg": b"x"}
    fs.sync_dir("/d")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {}


def test_sync_dir_makes_only_its_own_directory_durable() -> None:
    fs = sim()
    fs.makedirs("/d/wal")
    fs.makedirs("/d/snap")
    written(fs, "/d/wal/w", b"w", sync=True)
    written(fs, "/d/snap/s", b"s", sync=True)
    fs.sync_dir("/d/wal")
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/wal/w": b"w"}
    assert fs.dir_syncs == 1


@pytest.mark.parametrize(("torn", "expect"), [(0, b"abc"), (1, b"abcd"), (3, b"abcdef"), (99, b"abcdefgh")])
def test_torn_bytes_keeps_a_prefix_of_the_unsynced_tail(torn: int, expect: bytes) -> None:
    fs = sim()
    written(fs, "/d/log", b"abc", sync=True)
    fs.sync_dir("/d")
    written(fs, "/d/log", b"defgh")
    assert fs.after_crash(POWER_LOSS, torn_bytes=torn).read_bytes("/d/log") == expect


def test_torn_bytes_never_resurrects_truncated_data() -> None:
    fs = sim()
    written(fs, "/d/log", b"abcdef", sync=True)
    fs.sync_dir("/d")
    fs.truncate("/d/log", 2)  # truncate is durable, as RealFS.truncate fsyncs
    assert fs.after_crash(POWER_LOSS, torn_bytes=10).read_bytes("/d/log") == b"ab"


def test_an_unsynced_create_over_a_durable_file_keeps_the_old_bytes_on_power_loss() -> None:
    fs = sim()
    written(fs, "/d/a", b"old, synced", sync=True)
    fs.sync_dir("/d")
    f = fs.create("/d/a")  # O_TRUNC, then new bytes, no sync
    f.write(b"new")
    assert fs.after_crash(PROCESS).read_bytes("/d/a") == b"new"
    assert fs.after_crash(POWER_LOSS, torn_bytes=99).read_bytes("/d/a") == b"old, synced"
    f.sync()
    assert fs.after_crash(POWER_LOSS).read_bytes("/d/a") == b"new"


def test_metadata_first_persists_a_rename_before_the_data() -> None:
    """ext4 delayed allocation, xfs, btrfs: a journal commit (another file's fsync, the commit
    timer) carries the create and the rename, not the tmp file's unsynced bytes."""
    fs = sim()
    written(fs, "/d/snap", b"old", sync=True)
    fs.sync_dir("/d")
    written(fs, "/d/snap.tmp", b"new, not synced")
    fs.replace("/d/snap.tmp", "/d/snap")
    assert fs.after_crash(METADATA_FIRST).snapshot_files() == {"/d/snap": b""}  # the old one is gone
    assert fs.after_crash(POWER_LOSS).snapshot_files() == {"/d/snap": b"old"}


def test_metadata_first_keeps_unlinks_and_truncations_in_order_but_no_unsynced_data() -> None:
    fs = sim()
    written(fs, "/d/seg", b"x", sync=True)
    written(fs, "/d/a", b"old, synced", sync=True)
    fs.sync_dir("/d")
    fs.remove("/d/seg")
    f = fs.create("/d/a")  # O_TRUNC is metadata: committed; the new bytes are not
    f.write(b"new")
    written(fs, "/d/log", b"synced", sync=True)  # synced data under a name no dir fsync made durable
    written(fs, "/d/log", b" lost")
    assert fs.after_crash(METADATA_FIRST).snapshot_files() == {"/d/a": b"", "/d/log": b"synced"}
    f.sync()
    assert fs.after_crash(METADATA_FIRST).read_bytes("/d/a") == b"new"


def test_torn_blocks_keeps_a_later_block_and_loses_an_earlier_one() -> None:
    fs = sim()
    written(fs, "/d/log", b"s" * 100, sync=True)
    fs.sync_dir("/d")
    written(fs, "/d/log", b"u" * (3 * BLOCK))  # unsynced: blocks 0 (from byte 100), 1, 2, 3 (to 1636)
    data = fs.after_crash(TORN_BLOCKS).read_bytes("/d/log")
    assert data == b"s" * 100 + bytes(BLOCK - 100) + b"u" * BLOCK + bytes(BLOCK) + b"u" * 100
    assert (
        fs.after_crash(TORN_BLOCKS).snapshot_files().keys()
        == fs.after_crash(POWER_LOSS).snapshot_files().keys()
    )


def test_torn_blocks_tears_an_overwrite_in_place_into_old_and_new() -> None:
    fs = sim()
    written(fs, "/d/snap", b"o" * (2 * BLOCK), sync=True)
    fs.sync_dir("/d")
    f = fs.create("/d/snap")
    f.write(b"n" * (2 * BLOCK + 10))
    assert fs.after_crash(TORN_BLOCKS).read_bytes("/d/snap") == b"o" * BLOCK + b"n" * BLOCK
    f.sync()
    assert fs.after_crash(TORN_BLOCKS).read_bytes("/d/snap") == b"n" * (2 * BLOCK + 10)


def test_subsets_keep_exactly_the_unsynced_units_a_mask_picks() -> None:
    """A bounded exhaustive search's unit of choice: each name not yet durable and each unsynced
    block. Mask 0 is the strict power loss, all bits a process crash, one bit at a time each unit
    alone; every one of the 2**n masks gives another disk."""
    fs = sim()
    written(fs, "/d/log", b"s" * 100, sync=True)
    fs.sync_dir("/d")
    written(fs, "/d/log", b"u" * (2 * BLOCK))  # blocks 0 (from byte 100), 1, 2 unsynced
    written(fs, "/d/new", b"n", sync=True)  # synced data, name not durable
    units = fs.unsynced_units()
    assert units == [
        ("name", "/d/new"),
        ("block", "/d/log", 0),
        ("block", "/d/log", 1),
        ("block", "/d/log", 2),
    ]
    assert fs.after_crash(SUBSETS, 0).snapshot_files() == fs.after_crash(POWER_LOSS).snapshot_files()
    assert fs.after_crash(SUBSETS, 0b1111).snapshot_files() == fs.after_crash(PROCESS).snapshot_files()
    only_block_1 = fs.after_crash(SUBSETS, 0b0100).read_bytes("/d/log")
    assert only_block_1 == b"s" * 100 + bytes(BLOCK - 100) + b"u" * BLOCK  # a later block, an earlier lost
    assert fs.after_crash(SUBSETS, 0b0001).snapshot_files() == {"/d/log": b"s" * 100, "/d/new": b"n"}
    states = {tuple(fs.after_crash(SUBSETS, m).snapshot_files().items()) for m in range(16)}
    assert len(states) == 16


def test_the_survivor_is_all_durable() -> None:
    fs = sim()
    written(fs, "/d/a", b"123")
    fs.sync_dir("/d")
    once = fs.after_crash(PROCESS)
    assert once.after_crash(POWER_LOSS).snapshot_files() == {"/d/a": b"123"}
    assert once.is_dir("/d")
    # the survivor is a new file system: writing to it leaves the original alone
    written(once, "/d/a", b"4")
    assert fs.read_bytes("/d/a") == b"123"


def test_unknown_crash_model() -> None:
    assert set(CRASH_MODELS) == {"process", "power-loss", "metadata-first", "torn-blocks"}
    with pytest.raises(ValueError, match="unknown crash model 'meteor'"):
        sim().after_crash("meteor")


def test_hook_stops_a_write_after_n_bytes() -> None:
    fs = sim()
    f = fs.create("/d/log")
    seen: list[tuple[str, str, int]] = []

    def hook(op: str, path: str, n: int) -> int | None:
        seen.append((op, path, n))
        return 3 if op == "write" and n == 10 else None

    fs.hook = hook
    f.write(b"0123")
    with pytest.raises(SimulatedCrash, match="crash while writing /d/log"):
        f.write(b"456789abcd")
    assert fs.read_bytes("/d/log") == b"0123456"
    assert fs.bytes_written == 7
    assert seen == [("write", "/d/log", 4), ("write", "/d/log", 10)]


def test_a_simulated_crash_is_not_an_exception() -> None:
    fs = sim()
    fs.hook = lambda op, path, n: 0
    assert issubclass(SimulatedCrash, BaseException) and not issubclass(SimulatedCrash, Exception)
    with pytest.raises(SimulatedCrash):
        try:
            fs.create("/d/x")
        except Exception:  # what careless code does: it must not swallow the crash
            pytest.fail("SimulatedCrash was caught by `except Exception`")


@pytest.mark.parametrize(
    ("op", "call", "check"),
    [
        ("create", lambda fs: fs.create("/d/new"), lambda fs: not fs.exists("/d/new")),
        ("open", lambda fs: fs.open_append("/d/new"), lambda fs: not fs.exists("/d/new")),
        ("replace", lambda fs: fs.replace("/d/a", "/d/b"), lambda fs: fs.exists("/d/a")),
        ("remove", lambda fs: fs.remove("/d/a"), lambda fs: fs.exists("/d/a")),
        ("truncate", lambda fs: fs.truncate("/d/a", 0), lambda fs: fs.read_bytes("/d/a") == b"abc"),
        (
            "sync_dir",
            lambda fs: fs.sync_dir("/d"),
            lambda fs: fs.after_crash(POWER_LOSS).snapshot_files() == {},
        ),
    ],
)
def test_hook_stops_the_world_before_a_call(op: str, call, check) -> None:
    fs = sim()
    written(fs, "/d/a", b"abc", sync=True)
    ops: list[str] = []

    def hook(o: str, path: str, n: int) -> int | None:
        ops.append(o)
        return 0 if o == op else None

    fs.hook = hook
    with pytest.raises(SimulatedCrash, match=f"crash before {op}"):
        call(fs)
    assert ops[-1] == op
    fs.hook = None
    assert check(fs)


def test_hook_before_sync_leaves_the_bytes_unsynced() -> None:
    fs = sim()
    f = fs.create("/d/a")
    fs.sync_dir("/d")
    f.write(b"data")
    fs.hook = lambda op, path, n: 0 if op == "sync" else None
    with pytest.raises(SimulatedCrash, match="crash before sync /d/a"):
        f.sync()
    assert fs.syncs == 0
    assert fs.after_crash(POWER_LOSS).read_bytes("/d/a") == b""
    assert fs.after_crash(PROCESS).read_bytes("/d/a") == b"data"


def test_mark_triggers_the_hook_with_op_mark() -> None:
    fs = sim()
    seen: list[tuple[str, str, int]] = []
    fs.hook = lambda op, path, n: seen.append((op, path, n))  # returns None: go on
    fs.mark("snapshot-renamed")
    assert seen == [("mark", "snapshot-renamed", 0)]
    fs.hook = lambda op, path, n: 0 if path == "wal-rotated" else None
    fs.mark("snapshot-renamed")
    with pytest.raises(SimulatedCrash, match="crash before mark wal-rotated"):
        fs.mark("wal-rotated")


def test_the_storage_protocol_names_no_point_simfs_sees_them() -> None:
    """The production FS has no `mark`: SimFS recognises the persistence points of the snapshot and
    WAL protocols from the calls themselves, right after the call that completes each."""
    assert not hasattr(RealFS, "mark") and "mark" not in FS.__dict__
    fs = sim()
    seen: list[str] = []
    fs.hook = lambda op, path, n: seen.append(path) if op == "mark" else None  # type: ignore[func-returns-value]
    store = SnapshotStore(fs, "/d/snap", keep=1)
    store.save(5, 3, b"{}")
    assert seen == ["snapshot-tmp-written", "snapshot-tmp-synced", "snapshot-renamed", "snapshot-dir-synced"]
    seen.clear()
    store.save(9, 3, b"{}")
    store.prune()
    assert seen[-1] == "snapshots-pruned" and seen.count("snapshots-pruned") == 1
    seen.clear()
    wal, _, _ = WriteAheadLog.open(fs, "/d/wal")
    assert seen == ["wal-rotated"]  # the first segment, created
    wal.append(R.enqueue("a", {}))
    wal.rotate()
    assert seen == ["wal-rotated"] * 2
    wal.delete_through(1)
    assert seen == ["wal-rotated"] * 2 + ["wal-segments-deleted"]
    seen.clear()
    fs.create("/d/snap/snap-00000000000000000012.json.tmp").write(b"x")  # a point: then the same
    fs.mark("snapshot-tmp-written")  # point named again by a wrapper is not a second one
    fs.mark("snapshot-tmp-written")  # ... but named again after that, it is
    fs.replace("/d/snap/snap-00000000000000000012.json.tmp", "/d/snap/snap-00000000000000000012.json")
    fs.create("/d/other")  # not the directory sync right after the rename: no point there
    fs.sync_dir("/d/snap")
    assert seen == ["snapshot-tmp-written", "snapshot-tmp-written", "snapshot-renamed"]


def test_counters_and_paths_are_normalised() -> None:
    fs = SimFS()
    fs.makedirs("d//sub/")
    f = fs.create("d/sub/../sub/x")
    f.write(b"12345")
    f.sync()
    fs.sync_dir("/d/sub")
    assert fs.listdir("/d/sub") == ["x"]
    assert fs.read_bytes("/d/sub/x") == b"12345"
    assert (fs.bytes_written, fs.syncs, fs.dir_syncs) == (5, 1, 1)


def test_simfs_is_deterministic() -> None:
    def run() -> dict[str, bytes]:
        fs = sim()
        for i in (3, 1, 2):
            written(fs, f"/d/f{i}", bytes([i]) * i, sync=i % 2 == 1)
        fs.sync_dir("/d")
        return fs.after_crash(POWER_LOSS, torn_bytes=1).snapshot_files()

    assert run() == run()
    assert list(run()) == ["/d/f1", "/d/f2", "/d/f3"]

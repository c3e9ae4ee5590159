"""bench/bench_peers.py: a contender whose package or redis-server is missing is skipped with the
reason, and the others still run (here beaver, in a real subprocess, on real files)."""

import importlib.util
import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import bench_peers

pytestmark = pytest.mark.integration


def test_missing_names_the_package_or_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "huey" else real_find_spec(name)
    )
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert bench_peers.missing(bench_peers.CONTENDERS["huey"][1]) == (
        "huey not installed (pip install -e '.[peers]')"
    )
    assert "redis-server not found" in (bench_peers.missing(("redis-server",)) or "")
    assert bench_peers.missing(bench_peers.CONTENDERS["beaver_one_by_one"][1]) is None


def test_skips_cleanly_and_runs_the_rest(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)  # no peer package installed
    args = ["--only", "beaver_one_by_one,huey,rq_always,pq_seq", "--jobs", "40", "--rounds", "1"]
    assert bench_peers.main([*args, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[: out.index("\n\n| Contender")])
    assert set(res["skipped"]) == {"huey", "rq_always", "pq_seq"}
    assert res["skipped"]["pq_seq"] == "persist-queue not installed (pip install -e '.[peers]')"
    beaver = res["summary"]["beaver_one_by_one"]
    assert beaver["durability"].startswith("WAL fsync always")
    assert beaver["median"] > 0 and beaver["errors"] == []
    assert "| huey: huey SqliteHuey, 8 worker threads, task returns None | skipped: huey not installed" in out
    assert os.listdir(tmp_path) == []  # its temporary directory is gone

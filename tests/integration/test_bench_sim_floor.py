"""bench/bench_sim_floor.py stays a floor under `beaver sim`: it writes the simulator's WAL byte for
byte (every segment, headers at the checkpoints' rotations included) for the same outcome, and it
imports nothing from beaver_sim, so its time is what those bytes cost without the simulator."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import bench_sim_floor

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("jobs", [0, 1, 700])
def test_the_floor_writes_the_simulators_wal_byte_for_byte(jobs: int) -> None:
    out = bench_sim_floor.check(jobs)
    assert out["identical"] and out["first_difference"] is None
    assert out["floor_bytes"] == out["sim_bytes"] == out["sim_wal_bytes"]
    assert out["same_outcome"]


def test_the_floor_imports_nothing_of_beaver_sim() -> None:
    probe = (
        "import runpy, sys; sys.argv = ['floor', '300']; "
        f"runpy.run_path({bench_sim_floor.__file__!r}, run_name='__main__'); "
        "print(sorted(m for m in sys.modules if m.startswith('beaver_sim')))"
    )
    lines = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    summary, loaded = lines.strip().split("\n")
    assert json.loads(summary)["jobs"] == 300 and json.loads(summary)["completed"] > 0
    assert loaded == "[]"

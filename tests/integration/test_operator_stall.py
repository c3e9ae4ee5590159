"""`beaver cancel` of 2,000 jobs against a real `beaver run` holding 200,000 pending: the cancels
leave tombstones in the FIFO instead of searching it, so the controller's loop answers the cancel,
and an enqueue sent meanwhile, at once (tens of ms: the bound below is far above that and far below
the seconds that searching the FIFO 2,000 times took), none of the cancelled jobs runs, and the
state a restart reads is the same."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from beaver_sim.demo import RunProcess
from beaver_sim.runtime.server import request
from tests.beaver_process import beaver, serving

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

RUN = [
    *("--workers", "2", "--timeout", "5s", "--work-min", "1ms", "--work-max", "5ms"),
    *("--failure-rate", "0", "--snapshot-interval", "60s", "--metrics-port", "0"),
]
PENDING = 200_000
CANCELS = 2_000
BOUND = 1.5  # seconds: the old FIFO search took 3-4 s here, the tombstones tens of ms


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A data directory holding PENDING jobs, enqueued offline, and their ids in FIFO order."""
    tmp = tmp_path_factory.mktemp("cancels")
    ids = [f"p-{i:06d}" for i in range(PENDING)]
    jobs = [{"id": i, "payload": {"type": "compute", "n": 1}} for i in ids]
    (tmp / "jobs.json").write_bytes(orjson.dumps(jobs))
    data_dir = str(tmp / "d")
    beaver("enqueue", "--file", str(tmp / "jobs.json"), "--create", "--data-dir", data_dir)
    return data_dir, ids


@pytest.fixture
def run(template: tuple[str, list[str]], tmp_path: Path) -> Iterator[tuple[RunProcess, str]]:
    data_dir = str(tmp_path / "d")
    shutil.copytree(template[0], data_dir)
    with serving(data_dir, RUN) as proc:
        yield proc, data_dir


def timed(data_dir: str, req: dict[str, Any], out: dict[str, Any], name: str) -> None:
    t0 = time.perf_counter()
    out[name] = request(data_dir, req, timeout=60)
    out[f"{name}_s"] = time.perf_counter() - t0


def test_cancels_in_a_long_fifo_leave_the_loop_serving(
    run: tuple[RunProcess, str], template: tuple[str, list[str]]
) -> None:
    proc, data_dir = run
    ids = template[1]
    cancelled = ids[PENDING // 2 :: PENDING // 2 // CANCELS][:CANCELS]  # the back half: not reached meanwhile
    got: dict[str, Any] = {}
    canceller = threading.Thread(
        target=timed, args=(data_dir, {"op": "cancel", "ids": cancelled}, got, "cancel")
    )
    canceller.start()
    time.sleep(0.02)  # the enqueue comes while the cancel is handled (or just after)
    timed(data_dir, {"op": "enqueue", "jobs": [["late", {"type": "compute", "n": 1}]]}, got, "enqueue")
    canceller.join()
    assert got["cancel"] == {"ok": True, "cancelled": CANCELS} and got["enqueue"]["ok"] is True
    assert got["cancel_s"] < BOUND and got["enqueue_s"] < BOUND, got
    status = request(data_dir, {"op": "status"}, timeout=30)["status"]
    assert status["cancelled"] == CANCELS and status["jobs"] == PENDING + 1
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=60) == 0
    rows = orjson.loads(beaver("jobs", "--json", "--state", "cancelled", "--data-dir", data_dir).stdout)
    assert [r["id"] for r in rows] == cancelled and all(r["attempts"] == 0 for r in rows)

"""`requeue --dead` on a running controller revives REVIVE_SLICE dead jobs at a time
(runtime/service.py: Service._requeue_dead), so that everything else is served between two slices.
In process, with the slice made small: the slices run in turns of their own, named ids go with the
first (all or nothing: a named id not dead writes nothing), a job another client requeued between
two slices is skipped (each job revived once, counted once), the answer waits for the last slice to
be durable; a stop between two slices leaves the rest dead and answers `retry` (unless ids were
named: those would be refused, sent again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.runtime import service as service_module
from beaver_sim.runtime.server import request
from beaver_sim.runtime.service import Service
from beaver_sim.storage import wal
from beaver_sim.storage.fs import RealFS

DEAD = 300
SLICE = 40  # 8 slices: 7 of 40, the last of 20


def dead_jobs(root: str) -> list[str]:
    """A data directory of DEAD dead jobs, logged through the one transition function."""
    ids = [f"dead-{i:04d}" for i in range(DEAD)]
    storage = Storage.open(RealFS(), root)
    for job_id in ids:
        for rec in (R.enqueue(job_id, {}), R.dispatch(job_id, 1, 0, 1.0), R.dead(job_id, 1, "failed: no")):
            storage.append(rec)
    storage.close()
    return ids


def revived(root: str) -> list[str]:
    found: list[str] = []

    def keep(rec: dict[str, Any], _lsn: int) -> None:
        if rec["type"] == R.REVIVE:
            found.append(rec["job"])

    wal.scan(RealFS(), f"{root}/wal", on_record=keep)
    return found


def serve(
    tmp_path: Path, req: dict[str, Any], between: Callable[[Service, int], None]
) -> tuple[dict[str, Any], list[tuple[int, int]], Service]:
    """Send `req` to a Service over DEAD dead jobs; `between(service, n)` runs in the loop turn
    after the controller's n-th requeue call. The answer, each call's (ids given, loop turn)."""
    config = Config(
        data_dir=str(tmp_path / "d"), worker_count=2, work_min=0.0, work_max=0.001, failure_rate=0.0
    )
    dead_jobs(config.data_dir)
    calls: list[tuple[int, int]] = []
    turns = [0]

    async def go() -> tuple[dict[str, Any], Service]:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            turns[0] += 1
            loop.call_soon(tick)

        service = Service(config, serve_metrics=False, log=lambda line: None)
        await service.start()
        ctl = service.controller
        requeue = ctl.requeue

        def counted(ids: Any, on_durable: Callable[[], None] | None = None) -> int:
            ids = list(ids)
            calls.append((len(ids), turns[0]))
            loop.call_soon(between, service, len(calls))
            return requeue(ids, on_durable)

        ctl.requeue = counted  # type: ignore[method-assign]
        tick()
        try:
            answer = await asyncio.to_thread(request, config.data_dir, req)
        finally:
            service.request_stop()
            service.request_stop()  # and do not wait for running attempts
            await service.close()
        return answer, service

    answer, service = asyncio.run(go())
    return answer, calls, service


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "REVIVE_SLICE", SLICE)


def test_requeue_dead_is_logged_a_slice_a_turn_and_skips_what_another_client_requeued(tmp_path: Path) -> None:
    def another_client(service: Service, n: int) -> None:
        if n == 1:  # between the first two slices: the last slice's first job
            service.controller.requeue([f"dead-{DEAD - 20:04d}"])

    answer, calls, _ = serve(tmp_path, {"op": "requeue", "ids": ["dead-0100"], "dead": True}, another_client)
    # ours: the named id with the first slice, then 7 slices; the other client's between the first two
    assert [n for n, _ in calls] == [1 + SLICE, 1, SLICE, SLICE - 1, *[SLICE] * 4, 20 - 1]
    ours = [turn for i, (_, turn) in enumerate(calls) if i != 1]
    assert all(a < b for a, b in pairwise(ours))  # each slice in a turn of its own
    assert answer == {"ok": True, "requeued": DEAD - 1}
    found = revived(str(tmp_path / "d"))
    assert sorted(found) == [f"dead-{i:04d}" for i in range(DEAD)]  # each once: ours and the other's
    assert found[:2] == ["dead-0100", "dead-0000"]  # the named id first, then the oldest death


def test_a_named_id_not_dead_writes_nothing(tmp_path: Path) -> None:
    answer, calls, service = serve(
        tmp_path, {"op": "requeue", "ids": ["dead-0007", "nope"], "dead": True}, lambda s, n: None
    )
    assert answer == {"ok": False, "error": "cannot requeue job 'nope': no such job"}
    assert len(calls) == 1 and revived(str(tmp_path / "d")) == []
    assert len(service.controller.state.dead) == DEAD


def test_a_stop_between_two_slices_leaves_the_rest_dead_and_says_retry(tmp_path: Path) -> None:
    def stop(service: Service, n: int) -> None:
        if n == 2:
            service.controller.halt()

    error = (
        f"the controller is stopping: {2 * SLICE} jobs requeued, the others of the {DEAD} dead are still "
        "dead (requeue --dead again requeues them)"
    )
    answer, calls, service = serve(tmp_path, {"op": "requeue", "ids": [], "dead": True}, stop)
    assert answer == {"ok": False, "retry": True, "error": error}
    assert len(calls) == 2 and len(revived(str(tmp_path / "d"))) == 2 * SLICE
    assert len(service.controller.state.dead) == DEAD - 2 * SLICE


def test_a_stop_after_named_ids_were_requeued_is_not_retried(tmp_path: Path) -> None:
    """Sent again, the named ids would be refused (requeued already): the answer says what was done."""

    def stop(service: Service, n: int) -> None:
        if n == 1:
            service.controller.halt()

    answer, _, service = serve(tmp_path, {"op": "requeue", "ids": ["dead-0100"], "dead": True}, stop)
    assert answer["ok"] is False and "retry" not in answer
    assert answer["error"].startswith(f"the controller is stopping: {SLICE + 1} jobs requeued")
    assert len(service.controller.state.dead) == DEAD - SLICE - 1

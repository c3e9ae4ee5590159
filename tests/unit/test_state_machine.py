"""The state machine is one table, `core.types.STARTS` (which job states each record type may start
from): JobQueue's transitions accept a record exactly from those states and raise IllegalTransition
from every other, and docs/contracts.md's record table says the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import STARTS, IllegalTransition, JobStatus, Lease

CONTRACTS = Path(__file__).parents[2] / "docs" / "contracts.md"


def in_state(status: JobStatus) -> JobQueue:
    """A queue holding job "j" in `status`, its current attempt 1 (0 while pending or delayed)."""
    q = JobQueue()
    if status is JobStatus.DELAYED:
        q.enqueue("j", {}, 100.0)
        return q
    q.enqueue("j", {})
    if status is JobStatus.PENDING:
        return q
    if status is JobStatus.CANCELLED:
        q.cancel("j")
        return q
    q.dispatch("j", Lease(1, 0, 1.0))
    if status is JobStatus.COMPLETED:
        q.complete("j", 1)
    elif status is JobStatus.DEAD:
        q.kill("j", 1, "x")
    return q


def record(kind: str) -> R.Record:
    """A record of type `kind` for job "j": attempt 1, the next to dispatch or the one in flight."""
    attempt = 1
    made = {
        R.ENQUEUE: lambda: R.enqueue("j", {}),
        R.DISPATCH: lambda: R.dispatch("j", attempt, 0, 1.0),
        R.ACK: lambda: R.ack("j", attempt),
        R.FAIL: lambda: R.fail("j", attempt, "x"),
        R.TIMEOUT: lambda: R.timeout("j", attempt),
        R.REQUEUE: lambda: R.requeue("j", attempt),
        R.DEAD: lambda: R.dead("j", attempt, "x"),
        R.RELEASE: lambda: R.release("j"),
        R.REVIVE: lambda: R.revive("j"),
        R.CANCEL: lambda: R.cancel("j"),
    }[kind]()
    made["seq"] = 99
    return made


def test_every_job_record_type_is_in_the_table() -> None:
    assert set(STARTS) == set(R.APPLY) - {R.CONFIG}


@pytest.mark.parametrize("kind", sorted(STARTS))
@pytest.mark.parametrize("status", list(JobStatus))
def test_a_record_starts_from_exactly_the_states_of_the_table(kind: str, status: JobStatus) -> None:
    q = in_state(status)
    rec = record(kind)
    if status in STARTS[kind]:
        R.apply(q, rec)
        q.validate()
    else:
        with pytest.raises(IllegalTransition, match=f"state={status.value}"):
            R.apply(q, rec)


def test_an_unknown_job_is_refused_by_every_record_but_enqueue() -> None:
    for kind in sorted(set(STARTS) - {R.ENQUEUE}):
        with pytest.raises(IllegalTransition, match="state=unknown"):
            R.apply(JobQueue(), record(kind))


def contracts_table() -> dict[str, str]:
    """Record type -> its `from` cell, from docs/contracts.md's record table."""
    text = CONTRACTS.read_text()
    start = text.index("| type | fields | from | meaning |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[2]
    return rows


def test_the_contract_table_is_the_state_machine() -> None:
    rows = contracts_table()
    assert set(rows) == set(R.APPLY)
    for kind, cell in rows.items():
        named = re.findall(r"`([a-z_]+)`", cell)
        assert named == [s.value for s in STARTS.get(kind, ())], kind
    assert rows[R.ENQUEUE] == "a new id" and rows[R.CONFIG] == "no job"

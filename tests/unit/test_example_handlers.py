"""The example handlers through the real pool: `whoami` reports the thread or process that ran it."""

from __future__ import annotations

import os
from pathlib import Path

from beaver_sim.examples.handlers import whoami
from beaver_sim.runtime.workers import resolve


def test_whoami_writes_the_pid_and_thread_that_ran_it(tmp_path: Path) -> None:
    whoami({"out": str(tmp_path), "name": "a"})
    pid, thread = (tmp_path / "a").read_text().split()
    assert int(pid) == os.getpid() and thread == "MainThread"


def test_handlers_resolve_by_module_and_function() -> None:
    assert resolve("beaver_sim.examples.handlers:whoami") is whoami
    assert callable(resolve("beaver_sim.examples.handlers:sleep"))

"""The `beaver` CLI as a real process for the integration tests: run without the caller's BEAVER_*
settings, and `beaver run` started and stopped around a test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from beaver_sim.demo import RunProcess

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]


def clean() -> dict[str, str]:
    """This environment without BEAVER_* variables: the flags a test passes are the settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BEAVER_")}


def beaver(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One `beaver` command, which must succeed."""
    out = subprocess.run([*BEAVER, *argv], capture_output=True, text=True, timeout=timeout, env=clean())
    assert out.returncode == 0, out.stderr
    return out


@contextmanager
def serving(data_dir: str, run_args: Sequence[str]) -> Iterator[RunProcess]:
    """`beaver run` on `data_dir`, once it is ready; killed after if it is still running."""
    proc = RunProcess([*BEAVER, "run", "--data-dir", data_dir, *run_args], env=clean())
    try:
        proc.wait_line(re.compile(r"^ready"), 120)
        yield proc
    finally:
        proc.stop()

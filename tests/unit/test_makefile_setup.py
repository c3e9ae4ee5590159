"""`make setup` leaves the package byte-compiled: an editable install has no .pyc files, and where
PYTHONDONTWRITEBYTECODE is set no `beaver` process writes them, so each one would recompile the
package at start. The .pyc files stay out of git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILE = ".venv/bin/python -m compileall -q beaver_sim"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(*args: str) -> list[str]:
    """The commands `make` would run for `args`, run nowhere (-n)."""
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_a_fresh_setup_compiles_the_package_after_installing_it() -> None:
    lines = dry_run("-B", "setup")  # -B: as from a fresh clone, the venv made and installed
    install = next(i for i, line in enumerate(lines) if "pip install -q -e" in line)
    assert COMPILE in lines[install + 1 :]


def test_setup_refreshes_the_compiled_files_of_an_existing_venv() -> None:
    assert COMPILE in dry_run("setup")


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_compiled_files_are_ignored_by_git() -> None:
    for path in ("beaver_sim/__pycache__/wal.cpython-311.pyc", "beaver_sim/storage/__pycache__/x.pyc"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path

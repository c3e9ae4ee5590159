"""`beaver` as a plain `pip install beaver_sim` leaves it: the optional extras absent (simulated by
a process whose imports of them fail), run from a directory that is not a checkout. The wheel itself
is built, installed into a fresh venv and exercised by `make package-check` (scripts/package-check.sh)."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import beaver_sim

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

REPO = Path(__file__).resolve().parents[2]

# the modules of the dask, parquet and notebooks extras (pyproject.toml; a test keeps them equal)
EXTRAS = (
    *("dask", "distributed", "pyarrow"),
    *("ipykernel", "nbval", "nbclient", "jupyterlab", "papermill", "ipywidgets"),
)
BLOCKER = f"""
import sys
sys.modules.update(dict.fromkeys({EXTRAS!r}))  # None: import raises ModuleNotFoundError, find_spec is None
"""


def without_extras(*code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python where none of the extras can be imported."""
    program = BLOCKER + "\n".join(code)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)


def beaver(*argv: str) -> subprocess.CompletedProcess[str]:
    return without_extras("from beaver_sim.cli import main", f"sys.exit(main({list(argv)!r}))")


def test_the_blocked_modules_are_the_extras_the_package_uses() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = [
        name.lower().replace("-", "_")
        for extra in ("dask", "parquet", "notebooks")
        for requirement in extras[extra]
        for name in re.findall(r"[\w.-]+", requirement.split(">")[0].split("=")[0])
    ]
    assert sorted(names) == sorted(EXTRAS)


def test_the_blocker_blocks() -> None:
    out = without_extras("import dask")
    assert out.returncode == 1 and "ModuleNotFoundError: import of dask halted" in out.stderr


def test_every_module_imports_without_the_extras() -> None:
    names = [m.name for m in pkgutil.walk_packages(beaver_sim.__path__, "beaver_sim.")]
    assert "beaver_sim.labs" in names and "beaver_sim.sim.sweep" in names
    out = without_extras("import importlib", *(f"importlib.import_module({n!r})" for n in names))
    assert out.returncode == 0, out.stderr


def test_the_simulator_and_a_lab_work_without_the_extras(tmp_path: Path) -> None:
    out = beaver("crash-sweep", "--jobs", "4", "--executor", "serial", "--out", "s.csv", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "invariants ok at every point" in out.stdout and (tmp_path / "s.csv").is_file()
    lab = without_extras(
        "from beaver_sim.core import records as R",
        "from beaver_sim.labs import check",
        "r = check('retry', lambda job, attempt, max_retry, reason, error: R.dead(job, attempt, reason)"
        " if attempt >= max_retry else R.requeue(job, attempt), jobs=6, plot=False)",
        "sys.exit(0 if r.passed else 1)",
    )
    assert lab.returncode == 0 and lab.stdout.startswith("PASS: <lambda> kept every invariant"), lab.stderr


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["--executor", "dask"], "dask"),
        (["--executor", "serial", "--out", "sweep.parquet"], "parquet"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(argv: list[str], extra: str, tmp_path: Path) -> None:
    out = beaver("crash-sweep", "--jobs", "4", *argv)
    assert out.returncode == 2
    assert out.stderr == (
        f"beaver crash-sweep: error: needs the '{extra}' extra: pip install 'beaver_sim[{extra}]'\n"
    )
    assert out.stdout == "" and list(tmp_path.iterdir()) == []


def test_notebooks_without_jupyterlab_says_how_to_open_them(tmp_path: Path) -> None:
    out = beaver("notebooks", "course")
    assert out.returncode == 0, out.stderr
    assert "JupyterLab is not installed here: pip install 'beaver_sim[notebooks]'" in out.stdout
    assert (tmp_path / "course" / "notebooks" / "00-tour.ipynb").is_file()
    assert (tmp_path / "course" / "data" / "jobs.json").is_file()


def test_the_demo_runs_from_any_directory_on_the_jobs_the_package_carries(tmp_path: Path) -> None:
    (tmp_path / "fast.yaml").write_text(
        "worker_count: 8\ntask_timeout: 300ms\nwork_min: 10ms\nwork_max: 50ms\n"
    )
    out = beaver("demo", "--config", "fast.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = Path(beaver_sim.__file__).parent / "share" / "data" / "jobs.json"
    assert f"2. enqueued 100 jobs from {jobs} into " in out.stdout
    assert "demo passed" in out.stdout

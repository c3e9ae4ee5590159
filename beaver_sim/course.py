"""The files that travel with the package, in beaver_sim/share/: the course (notebooks, labs and the
files they read) and the demo's jobs, read through importlib.resources so that an installed
`beaver` finds them from any directory.

In a checkout share/notebooks, share/data and share/configs are symlinks to the repository's own
folders, the one copy of these files; building the sdist or the wheel copies what COURSE names
(pyproject.toml's package-data lists the same files, and a test keeps the two lists equal)."""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from beaver_sim.errors import BeaverError

# what `beaver notebooks DIR` writes, laid out as in the repository: the notebooks read ../data and
# ../configs
COURSE = (
    "notebooks/README.md",
    "notebooks/*.ipynb",
    "notebooks/labs/*.ipynb",
    "data/jobs.json",
    "configs/default.yaml",
    "configs/prometheus.yml",
)
LABS = "notebooks/labs"


def shared(path: str) -> Traversable:
    """A file or folder of beaver_sim/share/, e.g. `shared("data/jobs.json")`."""
    return files("beaver_sim").joinpath("share", *path.split("/"))


def course_files() -> list[str]:
    """The paths (relative to share/) of every file COURSE names, in order."""
    found: list[str] = []
    for pattern in COURSE:
        folder, _, name = pattern.rpartition("/")
        names = sorted(p.name for p in shared(folder).iterdir() if p.is_file())
        found += [f"{folder}/{n}" for n in names if fnmatch.fnmatchcase(n, name)]
    return found


def write_course(dest: Path, *, solutions: bool = False, force: bool = False) -> list[Path]:
    """Write the course to `dest` (created if missing; refused if not empty, unless `force`):
    the labs as learner versions (beaver_sim.labs.write_student), or as they are with `solutions`.
    Returns the paths written."""
    if dest.exists() and not dest.is_dir():
        raise BeaverError(f"{dest}: not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise BeaverError(
            f"{dest}: not empty; pick a new directory, or --force to overwrite the course's files"
        )
    written = []
    for name in course_files():
        if not solutions and name.startswith(LABS + "/"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shared(name).read_bytes())
        written.append(target)
    if not solutions:
        from beaver_sim.labs import write_student  # pandas and the simulator: only when writing labs

        written += write_student(shared(LABS), dest / LABS)
    return written

"""The files the package carries (beaver_sim/share/): one copy in the repository, the same list in
pyproject.toml and beaver_sim.course, and `beaver notebooks DIR` writing the course from them."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

import beaver_sim
from beaver_sim.cli import main
from beaver_sim.config import load_config
from beaver_sim.course import COURSE, course_files, shared, write_course
from beaver_sim.labs import student_notebook

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LABS = len(list((REPO / "notebooks" / "labs").glob("*.ipynb")))

pytestmark = pytest.mark.usefixtures("clean_env")


def test_share_is_the_repository_folders_themselves() -> None:
    for name in ("notebooks", "data", "configs"):
        link = REPO / "beaver_sim" / "share" / name
        assert link.is_symlink() and link.resolve() == REPO / name


def test_the_package_data_is_what_the_course_writes() -> None:
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["beaver_sim"] == [f"share/{p}" for p in COURSE]


def test_the_course_holds_every_notebook_lab_and_file_they_read() -> None:
    notebooks = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "notebooks").rglob("*.ipynb"))
    names = course_files()
    assert sorted(n for n in names if n.endswith(".ipynb")) == notebooks
    assert {"notebooks/README.md", "data/jobs.json", "configs/default.yaml", "configs/prometheus.yml"} <= set(
        names
    )
    for name in names:  # what a notebook reads relative to itself is in the course too
        if name.endswith(".ipynb"):
            for read in set(re.findall(r"\.\./(\w+/[\w.-]+)", shared(name).read_text())):
                assert read in names, f"{name} reads ../{read}"


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"] and PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "beaver_sim.__version__"}
    assert metadata.version("beaver_sim") == beaver_sim.__version__


def test_beaver_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"beaver {beaver_sim.__version__}\n"


def test_the_shipped_default_config_is_the_built_in_one() -> None:
    """An installed `beaver` run where no configs/default.yaml is (built-in defaults) behaves as the
    shipped file says."""
    shipped, built_in = load_config(str(shared("configs/default.yaml")), {}), load_config(None, {})
    assert (shipped.wal_dir, shipped.snapshot_dir) == (built_in.wal_dir, built_in.snapshot_dir)
    assert replace(shipped, wal_path="", snapshot_path="") == built_in


def test_learner_course(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "course"
    assert main(["notebooks", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(course_files())} files to {dest}: the notebooks, {LABS} labs (to solve" in out
    assert f"open them: jupyter lab {dest}" in out
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == sorted(course_files())
    for name in written:
        ours = (REPO / name).read_bytes()
        if name.startswith("notebooks/labs/"):
            lab = json.loads((dest / name).read_text())
            assert lab == student_notebook(json.loads(ours))
            assert "BEGIN SOLUTION" not in (dest / name).read_text()
        else:
            assert (dest / name).read_bytes() == ours, name


def test_solved_course_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["notebooks", str(tmp_path), "--solutions", "--force"]) == 0
    assert f"{LABS} labs (with their solutions)" in capsys.readouterr().out
    for name in course_files():
        assert (tmp_path / name).read_bytes() == (REPO / name).read_bytes(), name
    assert (tmp_path / "notes.txt").read_text() == "mine"  # --force overwrites only the course's files


def test_a_non_empty_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["notebooks", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"beaver notebooks: error: {tmp_path}: not empty; pick a new directory, or --force to overwrite "
        "the course's files\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_is_not_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert main(["notebooks", str(tmp_path / "f"), "--force"]) == 2
    assert capsys.readouterr().err == f"beaver notebooks: error: {tmp_path / 'f'}: not a directory\n"


def test_write_course_returns_what_it_wrote(tmp_path: Path) -> None:
    written = write_course(tmp_path / "c", solutions=True)
    assert sorted(p.relative_to(tmp_path / "c").as_posix() for p in written) == sorted(course_files())

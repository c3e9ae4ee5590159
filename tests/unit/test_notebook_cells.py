"""Strict nbval compares every stored output except those of cells marked `# NBVAL_IGNORE_OUTPUT`.
nbval reads the marker only when it is alone on its comment line (a reason after it, on the same
line, silently turns it off), and notebooks/README.md promises that each marked cell says why on
the next line: so both are checked here, for every notebook and lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
MARKER = "# NBVAL_IGNORE_OUTPUT"


def marked_cells() -> list[tuple[str, int, list[str]]]:
    """(notebook, cell index, source lines) of every code cell that mentions the marker."""
    out = []
    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            lines = "".join(cell["source"]).splitlines()
            if cell["cell_type"] == "code" and any("NBVAL_IGNORE_OUTPUT" in line for line in lines):
                out.append((str(path.relative_to(NOTEBOOKS)), i, lines))
    return out


CELLS = marked_cells()


def test_some_cells_are_marked() -> None:
    assert CELLS, "no marked cell found: the checks below would pass on nothing"


@pytest.mark.parametrize(("notebook", "index", "lines"), CELLS, ids=[f"{n}:{i}" for n, i, _ in CELLS])
def test_a_marked_cell_uses_the_marker_nbval_reads_and_says_why(
    notebook: str, index: int, lines: list[str]
) -> None:
    marks = [k for k, line in enumerate(lines) if "NBVAL_IGNORE_OUTPUT" in line]
    assert len(marks) == 1, f"{notebook} cell {index}: one marker per cell"
    k = marks[0]
    where = f"{notebook} cell {index}"
    mark = lines[k].strip()
    assert mark == MARKER, f"{where}: nbval ignores {mark!r}: the marker goes alone on its line"
    reason = lines[k + 1].strip() if k + 1 < len(lines) else ""
    words = reason.lstrip("#").strip(" ()").split()
    assert reason.startswith("#") and len(words) >= 3, (
        f"{where}: the line after the marker must be a comment saying why its output varies"
    )

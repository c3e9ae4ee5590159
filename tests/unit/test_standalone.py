"""The project stands alone: nothing in it points outside the repository (a design document, a seed
translation or benchmark programs that a clone does not have), and every docs/ page it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["beaver_sim", "tests", "bench", "configs", "notebooks", "scripts", "docs", "README.md", "Makefile"]
OUTSIDE = re.compile(r"DESIGN(\.md| §)|phase1-pseudocode|/work/|\.\./shared|shared/anchors")


def project_files() -> list[Path]:
    files: list[Path] = []
    for part in PARTS:
        path = ROOT / part
        files += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    return [f for f in files if "__pycache__" not in f.parts and f.suffix not in (".png", ".parquet")]


def test_nothing_refers_outside_the_project() -> None:
    me = Path(__file__).resolve()
    hits = [
        f"{f.relative_to(ROOT)}: {m.group(0)}"
        for f in project_files()
        if f.resolve() != me
        for m in OUTSIDE.finditer(f.read_text(encoding="utf-8", errors="replace"))
    ]
    assert hits == []


def test_every_docs_page_named_exists() -> None:
    text = "\n".join(f.read_text(errors="replace") for f in project_files())
    named = set(re.findall(r"docs/[\w-]+\.md", text))
    assert named >= {"docs/architecture.md", "docs/contracts.md", "docs/original-design.md"}
    assert [n for n in sorted(named) if not (ROOT / n).is_file()] == []


def test_the_benchmark_anchors_are_vendored() -> None:
    for name in ("simpy_seed_model.py", "pqueue_e2e.py"):
        text = (ROOT / "bench" / "anchors" / name).read_text()
        assert text.startswith("#!/usr/bin/env python3\n") and "Benchmark anchor, vendored here" in text

"""The parameter ranges each notebook declares, and seeded draws from them.

A teaching notebook's `parameters` cell says, beside each value, what a learner may set it to:

    JOBS = 20  # how many jobs · range 1..100
    CRASH_TIMES = [0.01, 0.3]  # virtual seconds · each in 0.0..2.0
    SCRAPE_INTERVAL = 1.0  # seconds · one of 0.5|1.0
    WORK_MIN, WORK_MAX = 0.05, 1.05  # seconds · range 0.0..0.2, 0.3..2.0
    QUANTILES = (0.5, 0.9)  # fixed

`range a..b` draws an int when both bounds are ints, else a float; `each in a..b` draws a list as
long as the default, sorted if the default is; `one of x|y` picks a Python literal; `fixed` keeps
the value. The notebooks' claims are computed or asserted, so any draw must run to the end: that is
what tests/integration/test_notebook_params.py checks (and `make notebooks-fuzz N=20` at length)."""

from __future__ import annotations

import ast
import io
import json
import random
import re
import tokenize
from pathlib import Path
from typing import Any

SPEC = re.compile(r"(range|each in|one of|fixed)\b\s*(.*)$")


def parameters_source(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{notebook.name}: {len(tagged)} cells tagged 'parameters', want 1")
    return "".join(tagged[0]["source"])


def declared(notebook: Path) -> dict[str, tuple[Any, str, str]]:
    """name -> (default value, kind, spec) for every parameter of the notebook's parameters cell."""
    source = parameters_source(notebook)
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    out: dict[str, tuple[Any, str, str]] = {}
    for stmt in ast.parse(source).body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            raise ValueError(f"{notebook.name}: line {stmt.lineno}: one plain assignment per line, please")
        target, value = stmt.targets[0], ast.literal_eval(stmt.value)
        names = [e.id for e in target.elts] if isinstance(target, ast.Tuple) else [target.id]  # type: ignore[attr-defined]
        values = list(value) if len(names) > 1 else [value]
        match = SPEC.search(comments.get(stmt.lineno, "").split("·")[-1].strip())
        if match is None:
            raise ValueError(
                f"{notebook.name}: {', '.join(names)} declares no range ('· range a..b', '· fixed', ...)"
            )
        kind, spec = match.groups()
        specs = [s.strip() for s in spec.split(",")] if len(names) > 1 else [spec.strip()]
        if kind != "fixed" and len(specs) != len(names):
            raise ValueError(f"{notebook.name}: {', '.join(names)}: one spec per name")
        for i, (name, default) in enumerate(zip(names, values)):
            out[name] = (default, kind, specs[i] if kind != "fixed" else "")
    return out


def _bound(text: str) -> int | float:
    value = ast.literal_eval(text)
    if not isinstance(value, int | float):
        raise ValueError(f"range bound {text!r} is not a number")
    return value


def _uniform(rng: random.Random, spec: str) -> int | float:
    lo_text, _, hi_text = spec.partition("..")
    lo, hi = _bound(lo_text), _bound(hi_text)
    if isinstance(lo, int) and isinstance(hi, int):
        return rng.randint(lo, hi)
    return round(rng.uniform(lo, hi), 3)


def contains(kind: str, spec: str, value: Any) -> bool:
    """Whether `value` lies in the declared range (the stored default must)."""
    if kind == "fixed":
        return True
    if kind == "one of":
        return value in [ast.literal_eval(x) for x in spec.split("|")]
    lo_text, _, hi_text = spec.partition("..")
    lo, hi = _bound(lo_text), _bound(hi_text)
    items = value if kind == "each in" else [value]
    return all(lo <= x <= hi for x in items)


def draw(notebook: Path, seed: int) -> dict[str, Any]:
    """One seeded draw of every non-fixed parameter."""
    rng = random.Random(f"{notebook.stem}:{seed}")
    params: dict[str, Any] = {}
    for name, (default, kind, spec) in declared(notebook).items():
        if kind == "range":
            params[name] = _uniform(rng, spec)
        elif kind == "each in":
            values = [_uniform(rng, spec) for _ in default]
            params[name] = sorted(values) if list(default) == sorted(default) else values
        elif kind == "one of":
            params[name] = rng.choice([ast.literal_eval(x) for x in spec.split("|")])
    return params

#!/usr/bin/env bash
# `make package-check` (part of `make test`): beaver_sim as `pip install` gives it, not as a clone.
# Builds the sdist and the wheel, checks them with twine, installs the wheel (with the notebooks
# extra, for jupyter) into a fresh venv outside the checkout and, from another directory, runs the
# demo, a simulation, a crash sweep, a lab check, and `beaver notebooks DIR` followed by executing
# one notebook there. pip's cache is the usual one, so a second run downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '== package-check: %s\n' "$*"; }

step "python -m build (sdist and wheel)"
if ! .venv/bin/python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1; then
    cat "$work/build.log"
    exit 1
fi
.venv/bin/twine check --strict "$work"/dist/*
wheel=$(echo "$work"/dist/*.whl)

step "a fresh venv in $work, the wheel with the notebooks extra"
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel[notebooks]"
export PATH="$work/venv/bin:$PATH"
mkdir "$work/elsewhere"
cd "$work/elsewhere"  # no checkout, no configs/ or data/ here: only what the package carries
test "$(command -v beaver)" = "$work/venv/bin/beaver"
beaver --version
python -c "import beaver_sim, pathlib, sys; sys.exit(not (pathlib.Path(beaver_sim.__file__).parent / 'py.typed').is_file())" \
    || { echo "package-check: the wheel has no beaver_sim/py.typed"; exit 1; }

step "beaver demo"
beaver demo
step "beaver sim"
beaver sim --jobs 50 --crash-at-record 40 --crash-model power-loss
step "beaver crash-sweep --jobs 10"
beaver crash-sweep --jobs 10 --no-progress
step "a lab check"
python - <<'EOF'
import sys

from beaver_sim.core import records as R
from beaver_sim.labs import check


def next_record(job, attempt, max_retry, reason, error):
    if attempt >= max_retry:
        return R.dead(job, attempt, reason if error is None else f"{reason}: {error}")
    if reason == "failed":
        return R.fail(job, attempt, error or "error")
    return R.timeout(job, attempt) if reason == "timeout" else R.requeue(job, attempt)


sys.exit(0 if check("retry", next_record, plot=False).passed else 1)
EOF
step "beaver notebooks course, then one notebook executed there"
beaver notebooks course
(cd course/notebooks && jupyter execute 00-tour.ipynb)  # exits non-zero if a cell raises
step "ok"

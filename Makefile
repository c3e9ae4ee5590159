# `make demo` and `make test` set everything up from a fresh clone (only python3 needed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup build test lint typecheck package-check demo bench clean metrics lab notebooks notebooks-fuzz student book

# An editable install leaves the package uncompiled, and where PYTHONDONTWRITEBYTECODE is set no run
# writes the .pyc files either: every `beaver` would recompile the package (~30 ms a start). So setup
# byte-compiles it, as pip does a wheel's files (again at each `make setup`: after a pull, stale .pyc
# are only ignored, never wrong).
COMPILE := $(BIN)/python -m compileall -q beaver_sim

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(COMPILE)
	touch $@

setup build: $(STAMP)
	$(COMPILE)

lint: $(STAMP)
	$(BIN)/ruff check beaver_sim tests bench scripts
	$(BIN)/ruff format --check beaver_sim tests bench scripts

# mypy --strict on the whole beaver_sim package ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck package-check
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest -q --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks

# the wheel installed into a fresh venv outside the checkout: demo, sim, sweep, a lab, the course
package-check: $(STAMP)
	PY=$(PY) scripts/package-check.sh

demo: $(STAMP)
	$(BIN)/beaver demo

lab: $(STAMP)  # JupyterLab on the notebooks (kernel "python3" is this .venv)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

notebooks: $(STAMP)  # after a code change: re-execute every notebook in place, then read `git diff notebooks`
	for nb in notebooks/[0-9]*.ipynb notebooks/labs/*.ipynb; do echo "$$nb"; $(BIN)/jupyter execute --inplace "$$nb" || exit 1; done

# More seeded draws from the parameter ranges each notebook declares (CI runs two): make notebooks-fuzz N=20
N ?= 10
notebooks-fuzz: $(STAMP)
	NOTEBOOK_FUZZ=$(N) $(BIN)/python -m pytest -q tests/integration/test_notebook_params.py -k drawn

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The lab notebooks for learners: each solution block replaced by `raise NotImplementedError`.
student: $(STAMP)
	$(BIN)/python -m beaver_sim.labs notebooks/labs build/student

# The course as a static site, read offline: each notebook's stored outputs (nothing is run), figures
# embedded, the contents in course order (scripts/book.py; tests/integration/test_book.py opens it)
book: $(STAMP)
	$(BIN)/python scripts/book.py notebooks build/book

metrics:
	@echo "Metrics: http://127.0.0.1:9090/metrics (while beaver run is running)"
	curl -s http://127.0.0.1:9090/metrics

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

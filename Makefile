# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# torch is installed (2.13.0, CPU wheel) only when the venv cannot import one already.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparsecomp-installed
SOURCES := $(shell find csrc sparsecomp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py') setup.py pyproject.toml

.PHONY: demo test bench bench-quick bench-full bench-pytest bench-results info install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install ninja "setuptools>=64" wheel numpy
	$(PY) -m pip install --no-build-isolation -e ".[test,examples]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sparsecomp demo

test: $(STAMP)
	$(PY) -m pytest tests -q

info: $(STAMP)
	$(PY) -m sparsecomp info

# `sparsecomp bench all --quick`: every suite's small grid (< 10 minutes on 2 cores); results in bench/out/<suite>/
bench: $(STAMP)
	$(PY) -m sparsecomp bench all --quick --out bench/out

bench-quick: bench

# every suite's full grid (tens of minutes on 2 cores)
bench-full: $(STAMP)
	$(PY) -m sparsecomp bench all --out bench/out

# pytest-benchmark suites (groups per shape: --benchmark-autosave, then --benchmark-compare after a change)
bench-pytest: $(STAMP)
	$(PY) -m pytest bench/ --benchmark-only

# refresh this machine's generated sparse section of bench/RESULTS.md (and its plot) from the last run
bench-results: $(STAMP)
	$(PY) -m sparsecomp.benchmark.results bench/out/sparse/results.json --copy-plot

clean:
	rm -rf build *.egg-info sparsecomp/*.so $(STAMP)

# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# torch is installed (2.13.0, CPU wheel) only when the venv cannot import one already.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparsecomp-installed
SOURCES := $(shell find csrc sparsecomp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py') setup.py pyproject.toml

.PHONY: demo test bench bench-quick info install clean

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

bench-quick: $(STAMP)
	$(PY) bench/sweep_sparse.py --quick --out bench/out

bench: $(STAMP)
	$(PY) bench/sweep_sparse.py --out bench/out

clean:
	rm -rf build *.egg-info sparsecomp/*.so $(STAMP)

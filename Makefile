# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the dependencies and build gswfast before running.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# AUTO: CUDA kernels when torch is a CUDA build and nvcc is found; ON: required; OFF: CPU only.
GSWFAST_CUDA ?= AUTO
export GSWFAST_CUDA

.PHONY: demo test bench install clean

demo: install
	$(VENV)/bin/gswfast demo --out gswfast_demo

test: install
	$(PY) -m pytest -p no:cacheprovider tests benchmarks --benchmark-disable

bench: install
	$(PY) -m pytest -p no:cacheprovider benchmarks --benchmark-only --benchmark-json=bench.json
	$(PY) benchmarks/summarize.py bench.json --markdown

install: $(VENV)/.deps
	$(PY) -m pip install --no-build-isolation --no-deps -q -e .

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

clean:
	rm -rf build bench.json

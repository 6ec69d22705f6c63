# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the dependencies and build gswfast before running.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# AUTO: CUDA kernels when torch is a CUDA build and nvcc is found; ON: required; OFF: CPU only.
GSWFAST_CUDA ?= AUTO
export GSWFAST_CUDA

.PHONY: demo test lint docs format bench install clean bench-peers isa-check

demo: install
	$(VENV)/bin/gswfast demo --out gswfast_demo

test: lint
	$(PY) -m pytest -p no:cacheprovider tests benchmarks --benchmark-disable

# Lint, format, types and the API reference (`make test` runs it first; about a minute on 2
# cores): ruff over the Python, clang-format over csrc/, strict mypy over gswfast/, and the
# Sphinx reference built offline with warnings as errors. `make format` applies both formatters.
CSRC := $(wildcard csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CSRC)
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory docs

docs: install
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html

format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix -q .
	$(VENV)/bin/ruff format -q .
	$(VENV)/bin/clang-format -i $(CSRC)

bench: install $(VENV)/.bench-peers
	$(PY) -m pytest -p no:cacheprovider benchmarks --benchmark-only --benchmark-json=bench.json
	$(PY) benchmarks/summarize.py bench.json --markdown

# The tests that compare two numerical paths (marker `paths`), run once per CPU set-up that
# this project's machines differ by: this machine as it is, AVX-512 with BF16 but no FP16/AMX
# (AMD EPYC Zen 4), AVX2 only (older Intel Xeon), baseline SSE4.1 kernels, and one thread.
# Each must pass everywhere: a comparison that depends on ties or reduction order fails here.
ISA_SETUPS := "" \
	"ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" \
	"ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" \
	"ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" \
	"OMP_NUM_THREADS=1"

isa-check: install
	@for setup in $(ISA_SETUPS); do \
	  echo "== isa-check: $${setup:-as is}"; \
	  env $$setup $(PY) -m pytest -p no:cacheprovider -q -m paths tests || exit 1; \
	done

install: $(VENV)/.deps
	$(PY) -m pip install --no-build-isolation --no-deps -q -e .

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Optional benchmark peers that only `make bench` needs. fast-slic ships only a source
# archive whose setup imports Cython and setuptools: install its build dependencies first,
# then build it against them without pip's isolated build environment (which cannot fetch
# Cython). A failure here leaves its benchmarks skipped with a reason, not a broken bench.
$(VENV)/.bench-peers: $(VENV)/.deps
	$(PY) -m pip install -q cython setuptools wheel
	$(PY) -m pip install -q --no-build-isolation fast-slic || echo "make bench: fast-slic did not build; its benchmarks will be skipped"
	touch $@

bench-peers: $(VENV)/.bench-peers

clean:
	rm -rf build bench.json docs/_build .mypy_cache .ruff_cache

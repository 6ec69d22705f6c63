# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the dependencies and build gswfast before running.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# AUTO: CUDA kernels when torch is a CUDA build and nvcc is found; ON: required; OFF: CPU only.
GSWFAST_CUDA ?= AUTO
export GSWFAST_CUDA

.PHONY: demo test lint docs docs-gallery format bench install clean bench-peers isa-check sanitize fma-check

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

# The user guide's gallery (docs/gallery/, committed): every method on the demo images and
# clips, drawn by the demo models (about 80 s on 2 cores).
docs-gallery: install
	$(PY) docs/make_gallery.py --out docs/gallery

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

# AddressSanitizer and UBSan over the native code (GSWFAST_SANITIZE in CMakeLists.txt): the
# CPU kernels are built into build/sanitize (never over the installed build), conftest.py
# loads them from there (GSWFAST_TEST_EXTENSION), and the tests of the native code run in an
# ordinary Python with the ASan runtime preloaded, libstdc++ right after it (the runtime
# looks up the real __cxa_throw when it starts, before Python would load libstdc++; without
# it the first C++ exception anywhere, such as one torch throws and catches while importing,
# stops the process). Leak checks are off: the interpreter and torch keep their allocations
# to the end. Reports go to build/sanitize/report.*: any report fails the run, and is
# printed; libstdc++'s assertions (_GLIBCXX_ASSERTIONS) abort with their message on stderr,
# which pytest does not capture here (a capture would die with the process). The stateful tests run 300 sequences here (40 in `make test`). CI runs this after
# `make test`.
SANITIZE_CXX ?= g++
SANITIZE_BUILD := build/sanitize
SANITIZE_TESTS := tests/test_state.py tests/test_state_machine.py tests/test_slic.py tests/test_slic_connectivity.py \
	tests/test_segment_pool.py tests/test_paint.py

sanitize: install
	CXX=$(SANITIZE_CXX) cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DGSWFAST_CUDA=OFF -DGSWFAST_SANITIZE=ON \
	  -DCMAKE_BUILD_TYPE=Release \
	  -DPython_EXECUTABLE=$(abspath $(PY)) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) > /dev/null
	cmake --build $(SANITIZE_BUILD)
	@rm -f $(SANITIZE_BUILD)/report.*
	@GSWFAST_TEST_EXTENSION=$(abspath $(SANITIZE_BUILD)) GSWFAST_HYPOTHESIS_EXAMPLES=300 \
	  LD_PRELOAD="$$($(SANITIZE_CXX) -print-file-name=libasan.so) $$($(SANITIZE_CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$(abspath $(SANITIZE_BUILD))/report \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(abspath $(SANITIZE_BUILD))/report \
	  $(PY) -m pytest -p no:cacheprovider -q --capture=no -m "not cuda" $(SANITIZE_TESTS); status=$$?; \
	if ls $(SANITIZE_BUILD)/report.* > /dev/null 2>&1; then \
	  echo "make sanitize: sanitizer reports:"; cat $(SANITIZE_BUILD)/report.*; exit 1; fi; \
	exit $$status

# The CPU/CUDA parity contract on a host build that fuses multiply-adds where it may: the
# CPU kernels built with -march=haswell (AVX2 and FMA for every loop; GCC then contracts
# a * b + c unless told not to, as CMakeLists.txt does) into build/fma, and the SLIC tests
# run on them in-process, the exact twin comparisons among them (CIELAB bits, centres,
# merges), then the `paths` tests again on the AVX2 loops and on the portable ones (the
# AVX-512 loops, where the CPU has them, are picked first). Skipped, saying so, on a CPU
# without FMA. CI runs this after `make sanitize`.
FMA_BUILD := build/fma

fma-check: install
	@if ! grep -qw fma /proc/cpuinfo; then echo "make fma-check: this CPU has no FMA; skipped"; exit 0; fi; \
	cmake -S . -B $(FMA_BUILD) -G Ninja -DGSWFAST_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_CXX_FLAGS=-march=haswell -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) > /dev/null && \
	cmake --build $(FMA_BUILD) && \
	GSWFAST_TEST_EXTENSION=$(abspath $(FMA_BUILD)) $(PY) -m pytest -p no:cacheprovider -q -m "not cuda" tests/test_slic.py && \
	for setup in "ATEN_CPU_CAPABILITY=avx2" "GSWFAST_SLIC_PORTABLE=1"; do \
	  echo "== fma-check: $$setup"; \
	  env $$setup GSWFAST_TEST_EXTENSION=$(abspath $(FMA_BUILD)) $(PY) -m pytest -p no:cacheprovider -q \
	    -m "paths and not cuda" tests/test_slic.py || exit 1; \
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

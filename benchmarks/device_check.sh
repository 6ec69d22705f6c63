#!/usr/bin/env bash
# Device check for a GPU machine that has its own torch (see docs/guide/contributing.md, "The GPU check").
# Builds gswfast for sm_90 only, runs the whole test suite (CUDA tests included),
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on the kernels with a small
# input (benchmarks/sanitize_case.py), the benchmarks, and a
# graph-timed profile of segment_pool. Writes under $OUT (or $1): summary.json,
# bench.json, bench.md, profile*.json and logs.txt (every stage's output).
# GSWFAST_DEVICE_PROFILE=1 adds a tile-size sweep and an Nsight Compute report (ncu.log).
# The benchmark stage runs the `cuda` benchmarks only (the CPU ones are measured on the
# build machines); GSWFAST_DEVICE_ALL_BENCH=1 runs them all. Wheels carried in .whl/
# (captum, lime, grad-cam, av, hypothesis: the peers, PyAV and the property-test library
# the GPU machine lacks; for its Python 3.12, e.g. `pip download --no-deps --only-binary
# :all: --python-version 3.12 -d .whl hypothesis`) are installed first, so their tests and
# benchmarks run instead of skipping. The statecheck stage runs the stateful tests under
# compute-sanitizer memcheck (GSWFAST_DEVICE_STATE_EXAMPLES sequences, default 15).
# Device time is short, so every stage has a wall-clock limit and logs.txt is written as
# the stages run (a run killed at its limit still returns what it saw). Knobs:
#   GSWFAST_DEVICE_TESTS   pytest selection for the test stage (default: tests; e.g.
#                          "tests -m cuda" for the CUDA tests alone, or a list of node ids)
#   GSWFAST_DEVICE_BENCH   pytest selection for the benchmark stage (default: benchmarks)
#   GSWFAST_DEVICE_SKIP    stages to leave out, e.g. "bench profile"
#   GSWFAST_DEVICE_TESTS_LIMIT, GSWFAST_DEVICE_BENCH_LIMIT  stage limits in s (600, 400);
#   GSWFAST_DEVICE_TEST_TIMEOUT  per test, where pytest-timeout is installed (150)
# Took about 4 minutes on an H100 machine with 16 cores before issue 4 (not timed since).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_out}}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" GSWFAST_CUDA=ON PYTHONUNBUFFERED=1
work=$(mktemp -d)
logs="$out/logs.txt"
: > "$logs"
status=0

stage() {  # stage NAME LIMIT_S COMMAND...: runs it under a time limit, its output appended
  # to logs.txt as it comes; records exit and time (exit 124: killed at the limit)
  local name=$1 limit=$2; shift 2
  case " ${GSWFAST_DEVICE_SKIP:-} " in *" $name "*) echo "== $name: skipped" | tee -a "$logs"; return;; esac
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$logs"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$logs" > "$work/$name.log"
  local code=${PIPESTATUS[0]}
  echo "$name $code $((SECONDS - t0))" >> "$work/stages.txt"
  echo "   exit $code after $((SECONDS - t0)) s" | tee -a "$logs"
  tail -n 4 "$work/$name.log"
  [ "$code" = 0 ] || status=1
}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# A hung kernel or test must cost one test, not the lease: pytest-timeout where installed.
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout="${GSWFAST_DEVICE_TEST_TIMEOUT:-150}" --timeout-method=thread)
read -r -a test_selection <<< "${GSWFAST_DEVICE_TESTS:-tests}"
read -r -a bench_selection <<< "${GSWFAST_DEVICE_BENCH:-benchmarks}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
stage gpu 30 nvidia-smi
stage build 300 "$PY" -m pip install --no-build-isolation --no-deps -v -e .
stage tests "${GSWFAST_DEVICE_TESTS_LIMIT:-600}" "$PY" -m pytest -p no:cacheprovider "${test_selection[@]}" -q -rfEs --tb=short \
  "${per_test[@]}" --junitxml="$out/tests.xml"
# SLIC's CUDA results must be the same bits run after run (no float atomics, no races):
# its CUDA tests again, GSWFAST_DEVICE_REPEAT more times (default 2).
for ((i = 1; i <= ${GSWFAST_DEVICE_REPEAT:-2}; i++)); do
  stage "slic_repeat$i" 120 "$PY" -m pytest -p no:cacheprovider tests/test_slic.py -m cuda -q "${per_test[@]}"
done
if command -v compute-sanitizer > /dev/null; then
  stage sanitizer 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
  stage racecheck 240 compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
  stage synccheck 120 compute-sanitizer --tool synccheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
  # Reads of device memory no kernel or copy wrote (at::empty scratch read before written).
  stage initcheck 180 compute-sanitizer --tool initcheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
  # Sequences of calls in one process, the CUDA kernels held to the CPU's bits (tests/test_state*.py;
  # the random sequences need hypothesis, carried in .whl/ for the GPU machine's Python).
  stage statecheck 300 env GSWFAST_HYPOTHESIS_EXAMPLES="${GSWFAST_DEVICE_STATE_EXAMPLES:-15}" \
    compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest -p no:cacheprovider -q -x \
    tests/test_state.py tests/test_state_machine.py
fi
bench_filter=(-m cuda)
[ "${GSWFAST_DEVICE_ALL_BENCH:-0}" = 1 ] && bench_filter=()
stage bench "${GSWFAST_DEVICE_BENCH_LIMIT:-400}" "$PY" -m pytest -p no:cacheprovider "${bench_selection[@]}" --benchmark-only -q \
  "${bench_filter[@]}" "${per_test[@]}" --benchmark-json="$out/bench.json" --benchmark-max-time=0.5
[ -f "$out/bench.json" ] && "$PY" benchmarks/summarize.py "$out/bench.json" --markdown > "$out/bench.md" 2>&1
stage profile 120 "$PY" benchmarks/profile_pool.py --json "$out/profile.json"
stage profile_slic 120 "$PY" benchmarks/profile_slic.py --json "$out/profile_slic.json"
# GSWFAST_DEVICE_NCU_SLIC=1: Nsight Compute on SLIC's heaviest kernels, the third launch of
# each in a batch of 64 640x480 frames (ncu_slic.log).
if [ "${GSWFAST_DEVICE_NCU_SLIC:-0}" = 1 ] && command -v ncu > /dev/null; then
  for kernel in assign_kernel merge_edges_kernel accumulate_kernel; do
    stage "ncu_$kernel" 120 ncu --clock-control none --kernel-name "regex:$kernel" --launch-skip 2 \
      --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis "$PY" benchmarks/profile_slic.py --ncu
    cat "$work/ncu_$kernel.log" >> "$out/ncu_slic.log"
  done
fi
if [ "${GSWFAST_DEVICE_PROFILE:-0}" = 1 ]; then
  for tile in 4096 16384; do
    GSWFAST_POOL_TILE=$tile stage "profile_tile$tile" 120 "$PY" benchmarks/profile_pool.py --json "$out/profile_tile$tile.json"
  done
  if command -v ncu > /dev/null; then
    stage ncu 180 ncu --clock-control none --kernel-name regex:pool_tiles --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis "$PY" benchmarks/profile_pool.py --ncu
    cp "$work/ncu.log" "$out/ncu.log"
  fi
fi

"$PY" - "$out" "$work" <<'PYEOF'
import json, os, platform, sys
import xml.etree.ElementTree as ET
import torch
import gswfast
out, work = sys.argv[1], sys.argv[2]
stages = [line.split() for line in open(f"{work}/stages.txt") if line.strip()] if os.path.exists(f"{work}/stages.txt") else []
summary = {
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "gswfast_build": gswfast.build_info(),
    "stages": {name: {"exit": int(c), "seconds": int(t)} for name, c, t in stages},
}
try:
    suite = ET.parse(f"{out}/tests.xml").getroot().find("testsuite")
    summary["tests"] = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
except Exception as exc:  # no junit file: the build or pytest failed early
    summary["tests"] = {"error": str(exc)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PYEOF
[ -f "$out/bench.md" ] && cat "$out/bench.md"
rm -rf "$work"
exit $status

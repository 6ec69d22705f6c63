#!/usr/bin/env bash
# Device check for a GPU machine that has its own torch (see README, "GPU check").
# Builds gswfast for sm_90 only, runs the whole test suite (CUDA tests included), a
# compute-sanitizer memcheck of the kernels on a small input, the benchmarks, and a
# graph-timed profile of segment_pool. Writes under $OUT (or $1): summary.json,
# bench.json, bench.md, profile*.json and logs.txt (every stage's output).
# GSWFAST_DEVICE_PROFILE=1 adds a tile-size sweep and an Nsight Compute report (ncu.log).
# The benchmark stage runs the `cuda` benchmarks only (the CPU ones are measured on the
# build machines); GSWFAST_DEVICE_ALL_BENCH=1 runs them all. Wheels carried in .whl/
# (captum, lime, grad-cam, av: the peers and PyAV the GPU machine lacks) are installed
# first, so their tests and benchmarks run instead of skipping.
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

stage() {  # stage NAME COMMAND...: runs it, appends its output to logs.txt, records exit and time
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$logs"
  "$@" > "$work/$name.log" 2>&1
  local code=$?
  cat "$work/$name.log" >> "$logs"
  echo "$name $code $((SECONDS - t0))" >> "$work/stages.txt"
  echo "   exit $code after $((SECONDS - t0)) s" | tee -a "$logs"
  tail -n 4 "$work/$name.log"
  [ "$code" = 0 ] || status=1
}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
stage gpu nvidia-smi
stage build "$PY" -m pip install --no-build-isolation --no-deps -v -e .
stage tests "$PY" -m pytest -p no:cacheprovider tests -q -rs --junitxml="$work/tests.xml"
if command -v compute-sanitizer > /dev/null; then
  stage sanitizer timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
fi
bench_filter=(-m cuda)
[ "${GSWFAST_DEVICE_ALL_BENCH:-0}" = 1 ] && bench_filter=()
stage bench "$PY" -m pytest -p no:cacheprovider benchmarks --benchmark-only -q "${bench_filter[@]}" \
  --benchmark-json="$out/bench.json" --benchmark-max-time=0.5
"$PY" benchmarks/summarize.py "$out/bench.json" --markdown > "$out/bench.md" 2>&1
stage profile "$PY" benchmarks/profile_pool.py --json "$out/profile.json"
if [ "${GSWFAST_DEVICE_PROFILE:-0}" = 1 ]; then
  for tile in 4096 16384; do
    GSWFAST_POOL_TILE=$tile stage "profile_tile$tile" "$PY" benchmarks/profile_pool.py --json "$out/profile_tile$tile.json"
  done
  if command -v ncu > /dev/null; then
    stage ncu timeout 180 ncu --kernel-name regex:pool_tiles --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis "$PY" benchmarks/profile_pool.py --ncu
    cp "$work/ncu.log" "$out/ncu.log"
  fi
fi

"$PY" - "$out" "$work" <<'PYEOF'
import json, platform, sys
import xml.etree.ElementTree as ET
import torch
import gswfast
out, work = sys.argv[1], sys.argv[2]
stages = [line.split() for line in open(f"{work}/stages.txt") if line.strip()]
summary = {
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "gswfast_build": gswfast.build_info(),
    "stages": {name: {"exit": int(c), "seconds": int(t)} for name, c, t in stages},
}
try:
    suite = ET.parse(f"{work}/tests.xml").getroot().find("testsuite")
    summary["tests"] = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
except Exception as exc:  # no junit file: the build or pytest failed early
    summary["tests"] = {"error": str(exc)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PYEOF
cat "$out/bench.md"
rm -rf "$work"
exit $status

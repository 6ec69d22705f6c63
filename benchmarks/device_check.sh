#!/usr/bin/env bash
# Device check for a GPU machine that has its own torch (see README, "GPU check").
# Builds gswfast for sm_90 only, runs the whole test suite (CUDA tests included), a
# compute-sanitizer memcheck of the kernels on a small input, and the benchmarks.
# Writes summary.json, tests.xml, bench.json, bench.md and logs under $OUT (or $1).
# Takes about 5 minutes on an H100 machine with 16 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_out}}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" GSWFAST_CUDA=ON PYTHONUNBUFFERED=1
: > "$out/stages.txt"
status=0

stage() {  # stage NAME COMMAND...: runs it, logs to $out/NAME.log, records exit code and time
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "$name $code $((SECONDS - t0))" >> "$out/stages.txt"
  echo "   exit $code after $((SECONDS - t0)) s"
  tail -n 5 "$out/$name.log"
  [ "$code" = 0 ] || status=1
}

nvidia-smi > "$out/nvidia-smi.log" 2>&1
stage build "$PY" -m pip install --no-build-isolation --no-deps -v -e .
stage tests "$PY" -m pytest -p no:cacheprovider tests -q -rs --junitxml="$out/tests.xml"
if command -v compute-sanitizer > /dev/null; then
  stage sanitizer timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" benchmarks/sanitize_case.py
fi
stage bench "$PY" -m pytest -p no:cacheprovider benchmarks --benchmark-only -q \
  --benchmark-json="$out/bench.json" --benchmark-max-time=0.5
"$PY" benchmarks/summarize.py "$out/bench.json" --markdown > "$out/bench.md" 2>&1

"$PY" - "$out" <<'PYEOF'
import json, platform, sys
import xml.etree.ElementTree as ET
import torch
import gswfast
out = sys.argv[1]
stages = [line.split() for line in open(f"{out}/stages.txt") if line.strip()]
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
cat "$out/bench.md"
exit $status

#!/usr/bin/env bash
# Builds the CUDA pooling kernel in several variants (GSWFAST_POOL_VEC / _PREFETCH), and for
# each runs the CUDA parity tests of segment_pool and the graph-timed profile. On a GPU
# machine with its own torch; writes variant_<vec>_<prefetch>.json under $OUT (or $1).
#   bash benchmarks/pool_variants.sh [OUT] ["4:1 8:0 4:0"]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_out}}"
variants="${2:-4:1 8:0 4:0}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" GSWFAST_CUDA=ON PYTHONUNBUFFERED=1
status=0
for variant in $variants; do
  vec=${variant%:*} prefetch=${variant#*:}
  echo "== variant vec=$vec prefetch=$prefetch"
  "$PY" -m pip install --no-build-isolation --no-deps -q -e . \
    -C cmake.define.GSWFAST_POOL_VEC="$vec" -C cmake.define.GSWFAST_POOL_PREFETCH="$prefetch" || { status=1; continue; }
  "$PY" -m pytest -p no:cacheprovider -q -x tests/test_segment_pool.py -m cuda \
    -k "not compile and not opcheck and not gradcheck" 2>&1 | tail -n 2 || status=1
  "$PY" benchmarks/profile_pool.py --json "$out/variant_${vec}_${prefetch}.json" > /dev/null || status=1
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); [print('  %-28s %.4f ms  x%.2f scatter_add_  %.0f%% of copy' % (r['case'], r['gswfast_ms'], r['speedup'], 100 * r['fraction_of_copy'])) for r in d['rows']]" "$out/variant_${vec}_${prefetch}.json"
done
exit $status

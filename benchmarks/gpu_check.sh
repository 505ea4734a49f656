#!/usr/bin/env bash
# The one script that checks a GPU machine: builds cliprt with its CUDA kernels (no package
# registry needed), runs the gpu-marked tests, then the GPU benchmark when it exists, and
# prints a short table last. Usage: bash benchmarks/gpu_check.sh RESULTS_DIR
set -uo pipefail
out="${1:?usage: gpu_check.sh RESULTS_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
t0=$(date +%s)
CLIPRT_CUDA=ON CLIPRT_CUDA_ARCHS="90-real;90-virtual" \
  python3 -m pip install --no-build-isolation --no-deps -q . > "$out/build.log" 2>&1
build_rc=$?
t1=$(date +%s)

test_rc=-1
if [ "$build_rc" -eq 0 ]; then
  python3 -m pytest -q -m gpu tests --junitxml="$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
  test_rc=$?
fi
t2=$(date +%s)

bench_rc=-1
if [ "$build_rc" -eq 0 ] && [ -f benchmarks/search_gpu.py ]; then
  timeout 300 python3 benchmarks/search_gpu.py --json "$out/search_gpu.json" --out "$out/search_gpu.md" \
    > "$out/search_gpu.log" 2>&1
  bench_rc=$?
fi
t3=$(date +%s)

python3 - "$out" <<'PY'
import json, sys, os, xml.etree.ElementTree as ET
out = sys.argv[1]
summary = {}
path = os.path.join(out, "gpu_tests.xml")
if os.path.exists(path):
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
json.dump(summary, open(os.path.join(out, "gpu_tests.json"), "w"))
PY
echo
echo "| step | rc | seconds |"
echo "|---|---|---|"
echo "| build (CUDA, sm_90) | $build_rc | $((t1 - t0)) |"
echo "| pytest -m gpu | $test_rc | $((t2 - t1)) |"
echo "| search_gpu.py | $bench_rc | $((t3 - t2)) |"
echo
echo "GPU: $(head -1 "$out/gpu.txt")"
echo "gpu tests: $(cat "$out/gpu_tests.json" 2>/dev/null)"
[ "$build_rc" -eq 0 ] || tail -20 "$out/build.log"
[ "$test_rc" -le 0 ] || tail -30 "$out/gpu_tests.log"

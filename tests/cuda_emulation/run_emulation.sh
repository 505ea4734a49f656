#!/usr/bin/env bash
# Builds and runs the CPU emulation of the CUDA code (tests/cuda_emulation/cusim.h), checking it
# against the CPU core without a GPU:
#   kernels: each kernel on its own (emulate_kernels.cpp; sections prepare, layout, select,
#            rescore, simt, mma)
#   index:   the whole DeviceIndex on an emulated runtime (emulate_index.cpp)
#   python:  cliprt._core built on the emulated runtime (one emulated device), then pytest
#            on the gpu-marked tests with the given arguments (device-array tests skip: no
#            cupy / torch device there); slow, so pick tests with -k
# Needs g++ >= 11 and the CUDA headers. Usage: bash tests/cuda_emulation/run_emulation.sh
# [kernels [section] | index [storage] | python [pytest args]]   (default: kernels, index)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${CUDA_HOME:-}" ]; then
  cuda_inc="-I$CUDA_HOME/include"
else  # the include directories nvcc itself uses
  cuda_inc="$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="\(.*\)".*/\1/p' | head -1)"
fi
out="${TMPDIR:-/tmp}/cliprt_emulation"
mkdir -p "$out"
cxx=(g++ -std=c++20 -O2 -ffp-contract=off -pthread -w -DCLIPRT_WITH_CUDA=1 -DCLIPRT_HAVE_X86_VARIANTS=0
     -I tests/cuda_emulation/shadow -I kernels -I csrc/include $cuda_inc)
what="${1:-all}"
if [ "$what" = all ] || [ "$what" = kernels ]; then
  "${cxx[@]}" tests/cuda_emulation/emulate_kernels.cpp csrc/src/codec.cpp -o "$out/kernels"
  "$out/kernels" "${2:-}"
fi
if [ "$what" = all ] || [ "$what" = index ] || [ "$what" = python ]; then
  cxx+=(-fPIC)
  objs=() pids=()
  for f in csrc/src/*.cpp csrc/src/cpu/scan_scalar.cpp; do
    o="$out/$(basename "$f").o"
    "${cxx[@]}" -c "$f" -o "$o" &
    objs+=("$o") pids+=($!)
  done
  for f in common/device common/cuda_host index/device_index index/device_search search/dispatch; do
    o="$out/$(basename "$f").cu.o"
    "${cxx[@]}" -x c++ -c "kernels/$f.cu" -o "$o" &
    objs+=("$o") pids+=($!)
  done
  "${cxx[@]}" -c tests/cuda_emulation/emulated_runtime.cpp -o "$out/emulated_runtime.o" &
  objs+=("$out/emulated_runtime.o") pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
fi
if [ "$what" = all ] || [ "$what" = index ]; then
  "${cxx[@]}" tests/cuda_emulation/emulate_index.cpp "${objs[@]}" -o "$out/index"
  "$out/index" "${2:-}"
fi
if [ "$what" = python ]; then
  pkg="$out/python"
  rm -rf "$pkg" && mkdir -p "$pkg" && cp -r python/cliprt "$pkg/"
  "${cxx[@]}" -shared $(python3 -m pybind11 --includes) csrc/bindings/module.cpp csrc/bindings/cuda_index.cpp \
    "${objs[@]}" -o "$pkg/cliprt/_core$(python3-config --extension-suffix)"
  shift
  # the emulated package must win over any installed cliprt (editable installs hook the
  # import system ahead of PYTHONPATH)
  PYTHONPATH="$pkg" python3 - "$@" <<'PY'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "cliprt" not in type(f).__module__]
import cliprt, pytest
assert "cliprt_emulation" in cliprt.__file__, cliprt.__file__
sys.exit(pytest.main(["-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu_search.py", *sys.argv[1:]]))
PY
fi

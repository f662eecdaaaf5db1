#!/usr/bin/env bash
# Compile every csrc/**/*.cu with nvcc for sm_90a and sm_80 against the installed torch's headers (a CPU torch is
# fine: nothing is linked or run). Exits non-zero if any file fails. Usage: csrc/check_cuda_compile.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python}}
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }
INC=$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-isystem " + p for p in include_paths()))')
ABI=$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
STD=$("$PY" -c 'import torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 10) else "c++17")')
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# A CPU torch ships c10/cuda headers but not the CMake-generated one they include: provide the CUDA build's copy.
TORCH_INC=$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(include_paths()[0])')
if [ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$OUT/shim/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$OUT/shim/c10/cuda/impl/cuda_cmake_macros.h"
  INC="$INC -isystem $OUT/shim"
fi
mapfile -t NVCC_FLAGS < <(grep -v '^#' csrc/nvcc_flags.txt | grep .)  # the build's nvcc flags (setup.py, CMake)
mapfile -t FILES < <(find csrc -name '*.cu' | sort)
[ ${#FILES[@]} -gt 0 ] || { echo "check_cuda_compile: no .cu files under csrc/" >&2; exit 2; }
fail=0
for f in "${FILES[@]}"; do
  # one nvcc call per file: host code compiled once, device code for both targets
  t0=$(date +%s)
  if "$NVCC" -c "$f" -o "$OUT/$(basename "$f").o" -std=$STD "${NVCC_FLAGS[@]}" \
      -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
      -Xcompiler -fPIC -D_GLIBCXX_USE_CXX11_ABI=$ABI -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ $INC; then
    echo "ok   $f [sm_90a, sm_80] ($(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL $f [sm_90a, sm_80]" >&2
    fail=1
  fi
done
exit $fail

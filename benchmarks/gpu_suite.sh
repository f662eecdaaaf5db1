#!/usr/bin/env bash
# Everything that needs a GPU, in one call (for the lent H100/H200; see benchmarks/RESULTS.md):
#   bash benchmarks/gpu_suite.sh [OUTDIR]
# Builds nothing ahead of time: the CPU ops JIT-compile on first use, the CUDA ops need
# `pip install --no-build-isolation --no-deps -e .` (ACHILLES_FAST_BUILD_CUDA=1) or run through Triton.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/achilles_gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
ACHILLES_FAST_BUILD_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -3
python3 -c "import achilles_fast.ops as o; print(o.backend_info())"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
python3 benchmarks/bench_kernels.py --device cuda --models all --out "$OUT/bench_kernels.csv" 2>&1 | tee "$OUT/bench_kernels.log" | tail -40
python3 benchmarks/bench_find_critical.py --random smollm2-135m --device cuda --dtype float32 --tokens 115 --k 100 --max-neurons 100 \
  --repeats 3 --json "$OUT/e2e_smollm2.json" 2>&1 | tee "$OUT/e2e_smollm2.log" | tail -12
python3 benchmarks/bench_find_critical.py --random llama3-8b --device cuda --dtype bfloat16 --tokens 128 --k 100 --max-neurons 100 \
  --repeats 3 --json "$OUT/e2e_llama3_8b.json" 2>&1 | tee "$OUT/e2e_llama3_8b.log" | tail -12
